//! Messages exchanged between replicas, and batches of them between hosts.

use crate::entry::{Entry, SnapshotMeta};
use crate::ids::{Index, ReplicaId, ShardId, Term};

/// The type of a [`Message`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Follower forwards proposed entries to its leader.
    #[default]
    Propose = 0,
    /// RequestVote RPC (Raft §5.2).
    RequestVote = 1,
    /// Answer to `RequestVote`; `reject` tells whether it was granted.
    RequestVoteResp = 2,
    /// Pre-vote (thesis §9.6): would you vote for me in term `term`?
    RequestPreVote = 3,
    /// Answer to `RequestPreVote`.
    RequestPreVoteResp = 4,
    /// AppendEntries RPC (Raft §5.3).
    Replicate = 5,
    /// Answer to `Replicate`.
    ReplicateResp = 6,
    /// Leader heartbeat; carries commit and a read-index context.
    Heartbeat = 7,
    /// Answer to `Heartbeat`.
    HeartbeatResp = 8,
    /// InstallSnapshot: the leader tells a follower to install a snapshot.
    InstallSnapshot = 9,
    /// A follower asks its leader for a read index (thesis §6.4).
    ReadIndex = 10,
    /// The leader's answer to `ReadIndex`.
    ReadIndexResp = 11,
    /// Leadership transfer: start an election now (thesis §3.10).
    TimeoutNow = 12,
    /// A follower forwards a leadership transfer request to its leader.
    TransferLeader = 13,
    /// Local: the transport could not reach `from`.
    Unreachable = 14,
    /// Local: result of streaming a snapshot to `from` (`reject` = failed).
    SnapshotStatus = 15,
    /// The leader tells followers the shard goes quiet (engine feature).
    Quiesce = 16,
    /// Answer to a forwarded `Propose` that was not taken (no leader known
    /// where it arrived, or the leader refused it): `entries` name the
    /// dropped proposals (keys, no payloads), `hint` the
    /// [`ProposalError`](crate::ProposalError) code. Sent only where the
    /// proposal is certainly not in any log, so that its proposer can fail
    /// it at once instead of waiting for its timeout. `log_index` names the
    /// leader the sender knows (0 if none): a hint for the proposer's
    /// caller, which the proposer's core does not adopt.
    ProposeDropped = 17,
}

impl MessageType {
    /// Decodes the wire value.
    pub fn from_u8(v: u8) -> Option<MessageType> {
        use MessageType::*;
        Some(match v {
            0 => Propose,
            1 => RequestVote,
            2 => RequestVoteResp,
            3 => RequestPreVote,
            4 => RequestPreVoteResp,
            5 => Replicate,
            6 => ReplicateResp,
            7 => Heartbeat,
            8 => HeartbeatResp,
            9 => InstallSnapshot,
            10 => ReadIndex,
            11 => ReadIndexResp,
            12 => TimeoutNow,
            13 => TransferLeader,
            14 => Unreachable,
            15 => SnapshotStatus,
            16 => Quiesce,
            17 => ProposeDropped,
            _ => return None,
        })
    }

    /// Messages that are produced locally and must never arrive over the network.
    pub fn is_local(self) -> bool {
        matches!(self, MessageType::Unreachable | MessageType::SnapshotStatus)
    }

    /// Responses to a request the sender received.
    pub fn is_response(self) -> bool {
        matches!(
            self,
            MessageType::RequestVoteResp
                | MessageType::RequestPreVoteResp
                | MessageType::ReplicateResp
                | MessageType::HeartbeatResp
                | MessageType::ReadIndexResp
        )
    }
}

/// One message between two replicas of a shard.
///
/// A flat struct (as in etcd raft and dragonboat): each type uses a subset of
/// the fields, documented per field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// What the message is.
    pub msg_type: MessageType,
    /// The shard.
    pub shard_id: ShardId,
    /// Sender replica.
    pub from: ReplicaId,
    /// Receiver replica.
    pub to: ReplicaId,
    /// Sender's term (0 for local messages and forwarded proposals).
    pub term: Term,
    /// `Replicate`: term of the entry before `entries`; votes: last log term.
    pub log_term: Term,
    /// `Replicate`: index of the entry before `entries`; votes: last log index;
    /// responses: the index acknowledged or rejected; `Heartbeat` and its
    /// answer: the leader's tick count when it sent the heartbeat (lease reads).
    pub log_index: Index,
    /// Leader's commit index (`Replicate`, `Heartbeat`).
    pub commit: Index,
    /// Rejection (responses), failure (`SnapshotStatus`).
    pub reject: bool,
    /// `ReplicateResp` rejection: follower's hint index; `ReadIndexResp`: the read index.
    pub hint: Index,
    /// `ReplicateResp` rejection: term of the follower's entry at `hint`.
    pub hint_term: Term,
    /// Entries (`Replicate`, `Propose`).
    pub entries: Vec<Entry>,
    /// Snapshot metadata (`InstallSnapshot`).
    pub snapshot: Option<SnapshotMeta>,
    /// Read-index request context (`ReadIndex`, `ReadIndexResp`, `Heartbeat`,
    /// `HeartbeatResp`); for `RequestVote`, [`CAMPAIGN_TRANSFER`] marks an
    /// election started by leadership transfer; for a rejecting
    /// `ReplicateResp`, [`LOG_LOST`] marks a replica that lost entries.
    pub context: u64,
}

/// `RequestVote.context` of an election started by `TimeoutNow`: voters must
/// not refuse it because they believe a leader exists (thesis §3.10, §4.2.3).
pub const CAMPAIGN_TRANSFER: u64 = 1;

/// `ReplicateResp.context` of a rejection from a replica under a recovery
/// guard: its storage lost entries it may have acknowledged, so the
/// leader's match index for it may be too high; `hint` is its last index
/// and the leader probes again from there (docs/recovery.md).
pub const LOG_LOST: u64 = 2;

/// `Replicate.context` of an append that carries no entries and only tells
/// a follower in pipelined replication the new commit index: accepted, it
/// is not answered (its answer would tell the leader nothing; at low load
/// these answers were a quarter of the messages of a write). A follower
/// that rejects it answers as always, so the leader backs off.
pub const COMMIT_ONLY: u64 = 3;

impl Message {
    /// A message of `msg_type` from `from` to `to`, other fields default.
    pub fn new(
        msg_type: MessageType,
        shard_id: ShardId,
        from: ReplicaId,
        to: ReplicaId,
    ) -> Message {
        Message {
            msg_type,
            shard_id,
            from,
            to,
            ..Message::default()
        }
    }

    /// Approximate encoded size, for batching limits.
    pub fn size_bytes(&self) -> u64 {
        96 + crate::entry::entries_size(&self.entries)
    }
}

/// Version of the message batch format ([`MessageBatch::bin_ver`]).
pub const MESSAGE_BATCH_VERSION: u32 = 1;

/// Messages of many shards from one host to another, with the data needed
/// to check that both belong to the same deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageBatch {
    /// Deployment id; a receiver drops batches from another deployment.
    pub deployment_id: u64,
    /// Raft address of the sending host.
    pub source_address: String,
    /// Format version, [`MESSAGE_BATCH_VERSION`].
    pub bin_ver: u32,
    /// The messages.
    pub messages: Vec<Message>,
}
