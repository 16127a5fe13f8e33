//! The one error type of the `longship` API.

use std::path::PathBuf;

use longship_raft::{ReplicaId, ShardId};

/// Everything a longship call can fail with. Each variant is a case a caller
/// can act on; [`Error::is_temporary`] tells which are worth retrying.
///
/// A [`Error::Timeout`] means "outcome unknown", never "failed": the
/// proposal may still be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No replica of this shard runs on this NodeHost.
    #[error("shard {0} not found on this NodeHost")]
    ShardNotFound(ShardId),
    /// A replica of this shard already runs on this NodeHost.
    #[error("shard {0} already exists on this NodeHost")]
    ShardAlreadyExists(ShardId),
    /// A configuration field is invalid.
    #[error("invalid config: `{field}` {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The session is unknown to the shard (never registered, closed or
    /// evicted), or it is used on the wrong shard.
    #[error("invalid session")]
    InvalidSession,
    /// The timeout is shorter than one RTT.
    #[error("timeout too small: must be at least one RTT ({rtt_ms} ms)")]
    TimeoutTooSmall {
        /// The NodeHost's RTT.
        rtt_ms: u64,
    },
    /// The payload exceeds the configured limit; nothing was proposed.
    #[error("payload of {size} bytes exceeds the limit of {max} bytes")]
    PayloadTooBig {
        /// Payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A queue or the in-memory log of the shard is full; retry later.
    #[error("system busy")]
    SystemBusy,
    /// The shard is closing or closed on this NodeHost.
    #[error("shard closed")]
    ShardClosed,
    /// Another membership change is in progress.
    #[error("pending config change")]
    PendingConfigChange,
    /// The request did not complete in time; its outcome is unknown.
    #[error("timeout (outcome unknown)")]
    Timeout,
    /// The request was dropped before it entered the log (no leader, or a
    /// leadership transfer in progress); retry.
    #[error("dropped: no leader or leadership transfer in progress")]
    Dropped,
    /// The NodeHost is stopped.
    #[error("NodeHost stopped")]
    Stopped,
    /// The request was cancelled by its caller.
    #[error("cancelled")]
    Cancelled,
    /// The shard rejected the request (e.g. a stale ordered config change,
    /// a removed replica id, or a snapshot not possible now).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The local replica of the shard is a witness: it holds no state
    /// machine data, so it takes no proposals, sessions or reads (ask a
    /// replica that holds data).
    #[error("the local replica of shard {0} is a witness: no proposals, sessions or reads")]
    Witness(ShardId),
    /// A replica id that was removed can never be used again.
    #[error("replica {0} was removed from the shard and cannot be re-added")]
    ReplicaRemoved(ReplicaId),
    /// Another NodeHost holds the directory.
    #[error("directory {0} is locked by another NodeHost")]
    DirLocked(PathBuf),
    /// The state machine returned an error.
    #[error("state machine error: {0}")]
    StateMachine(String),
    /// Log storage failed.
    #[error("log storage: {0}")]
    Storage(#[from] longship_storage::Error),
    /// Snapshot storage failed.
    #[error("snapshot: {0}")]
    Snapshot(#[from] longship_storage::snapshot::SnapshotError),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] longship_transport::SendError),
    /// The transport could not start (port in use, bad TLS files).
    #[error("transport setup: {0}")]
    TransportSetup(String),
    /// An I/O error outside log and snapshot storage (lock file, directories).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether retrying the same call later may succeed.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Error::SystemBusy | Error::Timeout | Error::Dropped | Error::PendingConfigChange
        )
    }

    pub(crate) fn invalid_config(field: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
