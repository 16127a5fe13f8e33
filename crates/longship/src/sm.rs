//! The state machine traits applications implement.
//!
//! Three kinds, as in dragonboat:
//! - [`StateMachine`]: state in memory, exclusive access for updates;
//!   lookups wait while an update runs.
//! - [`ConcurrentStateMachine`]: lookups run while updates run; snapshots
//!   are prepared quickly on the apply path and saved off it.
//! - [`OnDiskStateMachine`]: state lives in the application's own durable
//!   store; after a restart longship skips the entries it already applied,
//!   and snapshots stream its state only to bring other replicas up.
//!
//! Snapshots are written to and read from streams; the data never has to
//! fit in memory. Every method gets a [`StopFlag`] it should poll in long
//! loops so that closing a NodeHost does not wait for a long snapshot.

use std::any::Any;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use longship_raft::Index;

/// What a state machine returns for one applied entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmResult {
    /// A number of the application's choosing.
    pub value: u64,
    /// Optional bytes.
    pub data: Vec<u8>,
}

/// One entry handed to `update`: the application fills `result`.
#[derive(Clone, Debug, Default)]
pub struct SmEntry {
    /// Log index of the entry.
    pub index: Index,
    /// The proposed command.
    pub cmd: Bytes,
    /// The result the application sets.
    pub result: SmResult,
}

/// An error returned by a state machine. Returning an error from `update`
/// stops the replica (its state would otherwise diverge); from `lookup` it
/// only fails that read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SmError(pub String);

/// The message of [`SmError::snapshot_aborted`] (dragonboat's
/// `ErrSnapshotAborted`, a sentinel compared by value like it).
pub const SNAPSHOT_ABORTED: &str = "snapshot aborted by the state machine";

impl SmError {
    /// An error with a message.
    pub fn new(msg: impl Into<String>) -> SmError {
        SmError(msg.into())
    }

    /// What a state machine's `save_snapshot` (or `prepare_snapshot`)
    /// returns to abort a snapshot it does not want taken now: the save is
    /// discarded, nothing is compacted, the replica goes on, and a
    /// requested snapshot ends with [`Error::Aborted`](crate::Error::Aborted)
    /// (not `Rejected`).
    pub fn snapshot_aborted() -> SmError {
        SmError(SNAPSHOT_ABORTED.to_string())
    }

    /// Whether this is [`SmError::snapshot_aborted`].
    pub fn is_snapshot_aborted(&self) -> bool {
        self.0 == SNAPSHOT_ABORTED
    }
}

impl From<std::io::Error> for SmError {
    fn from(e: std::io::Error) -> Self {
        SmError(e.to_string())
    }
}

/// Set when the replica is being stopped: long operations should return early.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag that is not set.
    pub fn new() -> StopFlag {
        StopFlag::default()
    }

    /// Whether stopping was requested.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Requests stopping.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A state machine whose state lives in memory.
pub trait StateMachine: Send + Sync {
    /// Applies committed entries in log order, filling each `result`.
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError>;
    /// Answers a read-only query.
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError>;
    /// Writes the whole state to `w`.
    fn save_snapshot(&self, w: &mut dyn Write, stop: &StopFlag) -> Result<(), SmError>;
    /// Replaces the whole state by the one read from `r`.
    fn recover_from_snapshot(&mut self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError>;
    /// A hash of the whole state (dragonboat's `GetHash`), for checking
    /// that replicas agree ([`NodeHost::verify`](crate::NodeHost::verify)):
    /// equal states must give equal hashes on every replica. `None` (the
    /// default): the state machine offers none.
    fn hash(&self) -> Option<u64> {
        None
    }
    /// Releases resources; called once when the replica stops.
    fn close(&mut self) {}
}

/// A state machine whose lookups may run concurrently with updates.
/// longship never runs two updates, or an update and a snapshot
/// preparation, at the same time.
pub trait ConcurrentStateMachine: Send + Sync {
    /// Applies committed entries in log order, filling each `result`.
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError>;
    /// Answers a read-only query (may run during `update`).
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError>;
    /// Captures what `save_snapshot` needs, quickly, on the apply path.
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError>;
    /// Writes the state captured by `prepare_snapshot`, off the apply path.
    fn save_snapshot(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        stop: &StopFlag,
    ) -> Result<(), SmError>;
    /// Replaces the whole state by the one read from `r`.
    fn recover_from_snapshot(&self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError>;
    /// A hash of the whole state (dragonboat's `GetHash`), for checking
    /// that replicas agree ([`NodeHost::verify`](crate::NodeHost::verify)):
    /// equal states must give equal hashes on every replica. `None` (the
    /// default): the state machine offers none.
    fn hash(&self) -> Option<u64> {
        None
    }
    /// Releases resources; called once when the replica stops.
    fn close(&self) {}
}

/// A state machine whose state lives in its own durable store.
pub trait OnDiskStateMachine: Send + Sync {
    /// Opens the store and returns the index of the last entry it applied
    /// durably (0 if none). Entries up to it are not applied again.
    fn open(&self, stop: &StopFlag) -> Result<Index, SmError>;
    /// Applies committed entries in log order, filling each `result`.
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError>;
    /// Answers a read-only query (may run during `update`).
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError>;
    /// Makes everything applied so far durable.
    fn sync(&self) -> Result<(), SmError>;
    /// Captures a consistent view for `save_snapshot`, quickly.
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError>;
    /// Streams the captured view (used to bring other replicas up).
    fn save_snapshot(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        stop: &StopFlag,
    ) -> Result<(), SmError>;
    /// Replaces the whole state by the one read from `r`, durably.
    fn recover_from_snapshot(&self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError>;
    /// A hash of the whole state (dragonboat's `GetHash`), for checking
    /// that replicas agree ([`NodeHost::verify`](crate::NodeHost::verify)):
    /// equal states must give equal hashes on every replica. `None` (the
    /// default): the state machine offers none.
    fn hash(&self) -> Option<u64> {
        None
    }
    /// Releases resources; called once when the replica stops.
    fn close(&self) {}
}
