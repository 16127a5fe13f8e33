//! What the core asks its caller to do: the [`Update`].

use crate::entry::{Entry, HardState, SnapshotMeta};
use crate::ids::{Index, ReplicaId, ShardId, Term};
use crate::message::Message;

/// A linearizable read that may be served once the replica applied `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The read index (thesis §6.4).
    pub index: Index,
    /// The context the caller gave to `read_index`.
    pub context: u64,
}

/// Who leads the shard, as this replica knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader (`ReplicaId::NONE` if unknown).
    pub leader_id: ReplicaId,
    /// The term.
    pub term: Term,
}

/// Why a proposal (or a config change, or a transfer) was refused at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    /// No leader is known; retry later.
    #[error("no leader")]
    NoLeader,
    /// A leadership transfer is in progress; retry later.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// The leader holds too many uncommitted bytes; answer `SystemBusy`.
    #[error("too many uncommitted bytes")]
    TooManyUncommittedBytes,
    /// Another config change is pending (thesis §4.1).
    #[error("a config change is pending")]
    PendingConfigChange,
    /// The leader has not committed an entry of its term yet, which must
    /// precede a config change (thesis §4.1 safety fix); retry shortly.
    #[error("leader has not committed an entry in its term yet")]
    NotReady,
    /// The config change or transfer target is invalid (e.g. transfer to a
    /// witness, a non-voting or an unknown replica).
    #[error("invalid request")]
    Invalid,
    /// Too many reads are queued.
    #[error("too many pending reads")]
    TooManyPendingReads,
}

impl ProposalError {
    /// The code carried in a `ProposeDropped` message.
    pub fn code(self) -> u64 {
        match self {
            ProposalError::NoLeader => 1,
            ProposalError::TransferInProgress => 2,
            ProposalError::TooManyUncommittedBytes => 3,
            ProposalError::PendingConfigChange => 4,
            ProposalError::NotReady => 5,
            ProposalError::Invalid => 6,
            ProposalError::TooManyPendingReads => 7,
        }
    }

    /// The error of a `ProposeDropped` code (`None` for an unknown code).
    pub fn from_code(code: u64) -> Option<ProposalError> {
        Some(match code {
            1 => ProposalError::NoLeader,
            2 => ProposalError::TransferInProgress,
            3 => ProposalError::TooManyUncommittedBytes,
            4 => ProposalError::PendingConfigChange,
            5 => ProposalError::NotReady,
            6 => ProposalError::Invalid,
            7 => ProposalError::TooManyPendingReads,
            _ => return None,
        })
    }
}

/// Everything the caller must do after stepping the core, in this order:
/// send `messages`; persist `snapshot`, `entries` and `hard_state` with one
/// durable write; then send `persisted_messages`; apply `committed_entries`;
/// serve `ready_reads` once applied up to their index; finally call
/// [`Raft::advance`](crate::Raft::advance).
#[derive(Clone, Debug, Default)]
pub struct Update {
    /// The shard.
    pub shard_id: ShardId,
    /// This replica.
    pub replica_id: ReplicaId,
    /// Entries to append to durable storage (replacing any from their first index on).
    pub entries: Vec<Entry>,
    /// Hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader, to install and persist.
    pub snapshot: Option<SnapshotMeta>,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Messages that may leave before the persistence above (leader
    /// replication, thesis §10.2.1).
    pub messages: Vec<Message>,
    /// Messages that may leave only after the persistence above (votes,
    /// append acknowledgements).
    pub persisted_messages: Vec<Message>,
    /// Reads whose index is known.
    pub ready_reads: Vec<ReadState>,
    /// Contexts of reads that will never complete (leadership lost); their
    /// callers can be answered at once.
    pub dropped_reads: Vec<u64>,
    /// Set when the known leader or term changed.
    pub leader_change: Option<LeaderInfo>,
    /// Proposals this replica forwarded that were dropped where they
    /// arrived, with the reason: certainly in no log, their proposers can
    /// be answered at once. The entries carry key, client and series ids,
    /// type, and for config changes the change; no other payload.
    pub dropped_proposals: Vec<(Entry, ProposalError)>,
    /// The leader that the replica which dropped `dropped_proposals` knew
    /// (the last such answer's), if any: where the proposer's caller may
    /// retry. A hint only: this core does not adopt it.
    pub dropped_leader: Option<ReplicaId>,
    /// Set when this replica's [`RecoveryGuard`](crate::RecoveryGuard) was
    /// lifted: the storage must forget the guard (durably, with this
    /// update's other state).
    pub recovery_cleared: bool,
    /// What this update's write makes durable, to give back to
    /// [`Raft::persisted`](crate::Raft::persisted) once it is.
    pub write: WriteToken,
}

/// What one update handed out to be written: given back to
/// [`Raft::persisted`](crate::Raft::persisted) once the write (and every
/// earlier one) is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteToken {
    /// The replica's term when the update was taken.
    pub term: Term,
    /// The last entry not yet durable when the update was taken (in this
    /// write or an earlier one), if any.
    pub last: Option<(Index, Term)>,
    /// The hard state this write persists, if any.
    pub hard_state: Option<HardState>,
    /// The index of the snapshot this write installs, if any.
    pub snapshot: Option<Index>,
    /// Whether the write must be synced (fsync) before it is reported
    /// persisted: it holds entries, a snapshot, a new term or vote, a
    /// lifted recovery guard, or a commit index a config change waits for.
    /// Otherwise it holds at most a commit index, which is volatile state
    /// (Raft §5, Figure 2) and may be written without a sync.
    pub must_sync: bool,
}

impl Update {
    /// Whether something must be persisted.
    pub fn needs_persist(&self) -> bool {
        !self.entries.is_empty()
            || self.hard_state.is_some()
            || self.snapshot.is_some()
            || self.recovery_cleared
    }
}
