//! The one error type of the `longship` API.

use std::path::PathBuf;

use longship_raft::{Index, ReplicaId, ShardId};

/// Everything a longship call can fail with. Each variant is a case a caller
/// can act on; [`Error::is_temporary`] tells which are worth retrying.
///
/// A [`Error::Timeout`] means "outcome unknown", never "failed": the
/// proposal may still be applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No replica of this shard runs on this NodeHost.
    #[error("shard {0} is not running on this NodeHost: start a replica of it first")]
    ShardNotFound(ShardId),
    /// A replica of this shard already runs on this NodeHost.
    #[error("shard {0} already has a replica running on this NodeHost")]
    ShardAlreadyExists(ShardId),
    /// [`Start::New`](crate::Start::New) or [`Start::Join`](crate::Start::Join)
    /// for a replica this NodeHost holds data of (it was bootstrapped,
    /// joined or imported before): restart it with
    /// [`Start::Restart`](crate::Start::Restart).
    #[error(
        "replica {replica_id} of shard {shard_id} already has data on this NodeHost \
         (bootstrapped, joined or imported): start it with Start::Restart"
    )]
    ReplicaHasData {
        /// The shard.
        shard_id: ShardId,
        /// The replica.
        replica_id: ReplicaId,
    },
    /// [`Start::Restart`](crate::Start::Restart) for a replica this NodeHost
    /// holds no data of: bootstrap it with [`Start::New`](crate::Start::New),
    /// [`Start::Join`](crate::Start::Join) a running shard, or import a
    /// snapshot first ([`tools::import_snapshot`](crate::tools::import_snapshot)).
    #[error(
        "replica {replica_id} of shard {shard_id} has no data on this NodeHost to restart from: \
         start it with Start::New or Start::Join, or import a snapshot first"
    )]
    ReplicaHasNoData {
        /// The shard.
        shard_id: ShardId,
        /// The replica.
        replica_id: ReplicaId,
    },
    /// A setting or an argument is invalid; nothing was changed.
    #[error("invalid `{field}`: {reason}")]
    InvalidConfig {
        /// The setting or argument.
        field: &'static str,
        /// What is wrong with it and what is expected.
        reason: String,
    },
    /// The session is unknown to the shard (never registered, closed or
    /// evicted), or it is used on the wrong shard.
    #[error(
        "invalid session: the shard does not know it (never registered, closed or evicted) \
         or it belongs to another shard; register a new one"
    )]
    InvalidSession,
    /// The timeout is shorter than one RTT.
    #[error("timeout too small: it must be at least one RTT ({rtt_ms} ms)")]
    TimeoutTooSmall {
        /// The NodeHost's RTT.
        rtt_ms: u64,
    },
    /// The payload exceeds the configured limit; nothing was proposed.
    #[error(
        "payload of {size} bytes exceeds the limit of {max} bytes \
         (max_proposal_bytes, at most half of max_frame_bytes); nothing was proposed"
    )]
    PayloadTooBig {
        /// Payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A queue or the uncommitted log of the shard is full; retry later.
    #[error(
        "system busy: a request queue or the uncommitted log of the shard is full; retry later"
    )]
    SystemBusy,
    /// The local replica of the shard is closing, closed or failed.
    #[error("the local replica of the shard is closed (stopped, failed or being unloaded)")]
    ShardClosed,
    /// Another membership change is in progress.
    #[error("another membership change of the shard is in progress; retry once it completed")]
    PendingConfigChange,
    /// An ordered membership change ([`Config::ordered_config_change`]) was
    /// based on a membership that changed since: read the membership again
    /// ([`NodeHost::sync_get_shard_membership`]) and base the change on its
    /// `config_change_id`.
    ///
    /// [`Config::ordered_config_change`]: crate::Config::ordered_config_change
    /// [`NodeHost::sync_get_shard_membership`]: crate::NodeHost::sync_get_shard_membership
    #[error(
        "membership change based on config change {based_on}, but the membership is at {current}: \
         read the membership again and base the change on it"
    )]
    StaleConfigChange {
        /// The `config_change_index` the request named.
        based_on: Index,
        /// The shard's current config change id.
        current: Index,
    },
    /// The request did not complete in time; its outcome is unknown.
    #[error("timeout: the outcome is unknown (the request may still take effect)")]
    Timeout,
    /// The request was dropped before it entered the log (no leader, or a
    /// leadership transfer in progress); retry. `leader` is the leader known
    /// where it was dropped, if any: for a forwarded proposal, the leader
    /// the replica that refused it knew (a new leader after an election;
    /// the same leader while it transfers leadership), else this host's
    /// view. A hint for where to retry, not a promise.
    #[error(
        "request dropped before it entered the log (no leader, or a leadership transfer in progress){}; retry",
        leader.map(|l| format!("; leader hint: replica {l}")).unwrap_or_default()
    )]
    Dropped {
        /// The leader known where the request was dropped, if any.
        leader: Option<ReplicaId>,
    },
    /// The NodeHost is stopped.
    #[error("the NodeHost is stopped")]
    Stopped,
    /// The request was cancelled by its caller.
    #[error("the request was cancelled by its caller")]
    Cancelled,
    /// The state machine aborted the requested snapshot
    /// ([`SmError::snapshot_aborted`](crate::SmError::snapshot_aborted)):
    /// nothing was saved or compacted; ask again when the state machine
    /// allows it.
    #[error("the state machine aborted the snapshot: nothing was saved or compacted")]
    Aborted,
    /// The shard refused the request (e.g. a snapshot with nothing new to
    /// capture, an invalid transfer target, an invalid membership change).
    /// The text says why.
    #[error("the shard refused the request: {0}")]
    Rejected(String),
    /// The local replica of the shard is a witness: it holds no state
    /// machine data, so it takes no proposals, sessions or reads (ask a
    /// replica that holds data).
    #[error(
        "the local replica of shard {0} is a witness: it takes no proposals, sessions or reads"
    )]
    Witness(ShardId),
    /// A replica id that was removed can never be used again.
    #[error("replica {0} was removed from the shard and its id can never be used again")]
    ReplicaRemoved(ReplicaId),
    /// The data of this replica was removed from this NodeHost
    /// ([`NodeHost::remove_data`](crate::NodeHost::remove_data)): it can
    /// never be started (or imported) here again. Add a new replica, with a
    /// new id, to the shard instead.
    #[error(
        "the data of replica {replica_id} of shard {shard_id} was removed from this NodeHost: \
         it can never be started here again; add a replica with a new id instead"
    )]
    ReplicaDataRemoved {
        /// The shard.
        shard_id: ShardId,
        /// The replica.
        replica_id: ReplicaId,
    },
    /// The operation needs the shard's local replica stopped (or the shard
    /// idle: not being started or stopped), and it is not: stop it first
    /// ([`NodeHost::stop_replica`](crate::NodeHost::stop_replica)).
    #[error(
        "a replica of shard {0} is running on this NodeHost (or being started or stopped): stop it first"
    )]
    ShardNotStopped(ShardId),
    /// [`tools::import_snapshot`](crate::tools::import_snapshot): the new
    /// member list cannot be used (dragonboat's `ErrInvalidMembers`); the
    /// text says which rule it breaks. Nothing was changed.
    #[error("invalid members for the import: {0}")]
    InvalidMembers(String),
    /// [`tools::import_snapshot`](crate::tools::import_snapshot): the
    /// snapshot directory does not exist (dragonboat's `ErrPathNotExist`).
    /// Nothing was changed.
    #[error(
        "snapshot directory {} does not exist: pass the directory request_snapshot returned in SnapshotResult::export_dir",
        .0.display()
    )]
    SnapshotPathNotFound(PathBuf),
    /// [`tools::import_snapshot`](crate::tools::import_snapshot): the
    /// snapshot directory lacks part of a snapshot (its metadata or a data
    /// file; dragonboat's `ErrIncompleteSnapshot`). Copy the whole export
    /// again. Nothing was changed.
    #[error("snapshot in {} is incomplete: {reason}; copy the whole exported directory again", dir.display())]
    IncompleteSnapshot {
        /// The snapshot directory.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// [`NodeHost::verify`](crate::NodeHost::verify): replicas of the shard
    /// hold different states at the same applied index (their state
    /// machines' hashes differ): a bug in a state machine (non-determinism)
    /// or in longship. Stop writing and investigate.
    #[error(
        "replicas of shard {shard_id} diverged: at applied index {index} their state hashes are {hashes:?}"
    )]
    StateDiverged {
        /// The shard.
        shard_id: ShardId,
        /// The applied index compared.
        index: Index,
        /// Each host's raft address and hash.
        hashes: Vec<(String, u64)>,
    },
    /// Another NodeHost holds the directory.
    #[error("directory {} is in use by another NodeHost: stop it first", .0.display())]
    DirLocked(PathBuf),
    /// The state machine returned an error.
    #[error("state machine error: {0}")]
    StateMachine(String),
    /// Log storage failed.
    #[error("log storage: {0}")]
    Storage(#[from] longship_storage::Error),
    /// Snapshot storage failed.
    #[error("snapshot storage: {0}")]
    Snapshot(#[from] longship_storage::snapshot::SnapshotError),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] longship_transport::SendError),
    /// The transport could not start (port in use, bad TLS files).
    #[error("the transport could not start: {0}")]
    TransportSetup(String),
    /// An I/O error outside log and snapshot storage (lock file, directories).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the same call, retried later unchanged (perhaps on another
    /// NodeHost), may succeed: dragonboat's `IsTempError` classification.
    ///
    /// | variant | temporary | why |
    /// |---|---|---|
    /// | `SystemBusy` | yes | a bounded queue or the uncommitted log is full (dragonboat `ErrSystemBusy`) |
    /// | `Timeout` | yes | outcome unknown; with a session the retry is applied at most once (`ErrTimeout`) |
    /// | `Dropped` | yes | no leader yet or a transfer in progress (`RequestDropped`, `ErrShardNotReady`) |
    /// | `PendingConfigChange` | yes | another membership change completes first (`ErrPendingConfigChangeExist`) |
    /// | `ShardClosed` | yes | the local replica is closing: retry on another host or once it runs again (`ErrShardClosed`) |
    /// | `Stopped` | yes | this NodeHost is shutting down: retry on another host (`ErrSystemStopped`, `ErrClosed`) |
    /// | `ShardNotFound`, `ShardAlreadyExists`, `ShardNotStopped` | no | the caller must start or stop a replica first |
    /// | `ReplicaHasData`, `ReplicaHasNoData`, `ReplicaDataRemoved`, `ReplicaRemoved` | no | the replica's stored state decides; another `Start` or a new replica id is needed |
    /// | `InvalidConfig`, `InvalidSession`, `TimeoutTooSmall`, `PayloadTooBig`, `StaleConfigChange` | no | the arguments must change (`ErrInvalidSession`, `ErrTimeoutTooSmall`, `ErrPayloadTooBig`, `ErrRejected`) |
    /// | `Rejected`, `Aborted`, `Cancelled`, `Witness` | no | the shard, the state machine or the caller said no (`ErrRejected`, `RequestAborted`, `ErrCanceled`) |
    /// | `InvalidMembers`, `SnapshotPathNotFound`, `IncompleteSnapshot` | no | an import's input must change (`ErrInvalidMembers`, `ErrPathNotExist`, `ErrIncompleteSnapshot`) |
    /// | `DirLocked`, `StateMachine`, `StateDiverged`, `Storage`, `Snapshot`, `Transport`, `TransportSetup`, `Io` | no | a fault an operator has to look at |
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            Error::SystemBusy
                | Error::Timeout
                | Error::Dropped { .. }
                | Error::PendingConfigChange
                | Error::ShardClosed
                | Error::Stopped
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message is one sentence: lower-case start, no trailing period,
    /// no prefix repeated, and the id of what it is about.
    #[test]
    fn messages_are_one_clear_sentence() {
        let cases = [
            Error::ShardNotFound(ShardId(7)),
            Error::ReplicaHasData {
                shard_id: ShardId(7),
                replica_id: ReplicaId(2),
            },
            Error::ReplicaHasNoData {
                shard_id: ShardId(7),
                replica_id: ReplicaId(2),
            },
            Error::invalid_config("snapshot_dir", "is not a directory"),
            Error::StaleConfigChange {
                based_on: Index(3),
                current: Index(5),
            },
            Error::Rejected("nothing new to snapshot".into()),
            Error::Timeout,
            Error::SystemBusy,
            Error::DirLocked(PathBuf::from("/data/nh1")),
        ];
        for e in cases {
            let s = e.to_string();
            assert!(!s.ends_with('.'), "{s}");
            assert!(
                s.chars()
                    .next()
                    .is_some_and(|c| !c.is_uppercase() || s.starts_with("NodeHost")),
                "{s}"
            );
            for word in s.split([' ', ':']).filter(|w| w.len() > 3) {
                assert!(
                    !s.contains(&format!("{word}: {word}")),
                    "repeated prefix in {s}"
                );
            }
        }
        assert_eq!(
            Error::ReplicaHasData {
                shard_id: ShardId(7),
                replica_id: ReplicaId(2)
            }
            .to_string(),
            "replica 2 of shard 7 already has data on this NodeHost \
             (bootstrapped, joined or imported): start it with Start::Restart"
        );
        assert_eq!(
            Error::invalid_config("snapshot_dir", "is not a directory").to_string(),
            "invalid `snapshot_dir`: is not a directory"
        );
    }
}
