//! Per-replica protocol configuration.

use crate::ids::{ReplicaId, ShardId};

/// Configuration of one replica's protocol core.
///
/// Times are in ticks; the engine ticks once per RTT (`rtt_ms`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    /// The shard.
    pub shard_id: ShardId,
    /// This replica.
    pub replica_id: ReplicaId,
    /// Ticks without hearing from a leader before an election starts
    /// (randomized in `[election_rtt, 2 * election_rtt)`). Must exceed `2 * heartbeat_rtt`.
    pub election_rtt: u64,
    /// Ticks between leader heartbeats.
    pub heartbeat_rtt: u64,
    /// A leader steps down when it has not heard from a quorum for an
    /// election timeout; followers ignore vote requests while they believe a
    /// leader exists (thesis §6.2, §4.2.3).
    pub check_quorum: bool,
    /// Run a pre-vote round before every election (thesis §9.6).
    pub pre_vote: bool,
    /// Serve reads on the leader without a heartbeat round, relying on
    /// CheckQuorum and bounded clock drift (thesis §6.4.1). Requires `check_quorum`.
    pub lease_read: bool,
    /// Most `Replicate` messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// Most entry bytes in flight to one follower.
    pub max_inflight_bytes: u64,
    /// Most entry bytes in one `Replicate` message (at least one entry is always sent).
    pub max_append_bytes: u64,
    /// Most payload bytes a leader holds uncommitted; proposals beyond it are
    /// refused with [`ProposalError::TooManyUncommittedBytes`](crate::ProposalError). 0 = unlimited.
    pub max_uncommitted_bytes: u64,
    /// Most entry bytes of committed entries handed out in one `Update`,
    /// and handed out in updates not yet wholly reported applied with
    /// [`Raft::applied_to`](crate::Raft::applied_to): a slow state machine
    /// holds back further committed entries instead of queueing them
    /// without bound (at least one entry is handed out when none is
    /// outstanding).
    pub max_apply_bytes: u64,
    /// Most read-index requests a leader queues before it committed an entry
    /// of its term, or waiting for a heartbeat quorum.
    pub max_pending_reads: usize,
    /// Seed of the replica's random source (election timeouts).
    pub seed: u64,
    /// Asynchronous storage writes: [`Raft::get_update`](crate::Raft::get_update)
    /// may be called again while the writes of earlier updates are still
    /// in flight, and each write is reported durable with
    /// [`Raft::persisted`](crate::Raft::persisted), in the order the
    /// updates were taken. The caller must complete writes in that order
    /// and send an update's `persisted_messages` only once its write and
    /// every earlier one are durable. Off (the default), every update is
    /// persisted and [`advanced`](crate::Raft::advance) before the next is
    /// taken.
    pub async_storage_writes: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            shard_id: ShardId(1),
            replica_id: ReplicaId(1),
            election_rtt: 10,
            heartbeat_rtt: 1,
            check_quorum: true,
            pre_vote: true,
            lease_read: false,
            max_inflight_msgs: 256,
            max_inflight_bytes: 32 << 20,
            max_append_bytes: 1 << 20,
            max_uncommitted_bytes: 0,
            max_apply_bytes: 64 << 20,
            max_pending_reads: 4096,
            seed: 0,
            async_storage_writes: false,
        }
    }
}

/// Why a [`RaftConfig`] is invalid; names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field has an invalid value.
    #[error("invalid config field `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

impl RaftConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason| Err(ConfigError::Invalid { field, reason });
        if self.shard_id.0 == 0 {
            return bad("shard_id", "must be non-zero");
        }
        if self.replica_id.is_none() {
            return bad("replica_id", "must be non-zero");
        }
        if self.heartbeat_rtt == 0 {
            return bad("heartbeat_rtt", "must be non-zero");
        }
        if self.election_rtt <= 2 * self.heartbeat_rtt {
            return bad("election_rtt", "must be greater than 2 * heartbeat_rtt");
        }
        if self.lease_read && !self.check_quorum {
            return bad("lease_read", "requires check_quorum");
        }
        if self.max_inflight_msgs == 0 {
            return bad("max_inflight_msgs", "must be non-zero");
        }
        if self.max_inflight_bytes == 0 {
            return bad("max_inflight_bytes", "must be non-zero");
        }
        if self.max_append_bytes == 0 {
            return bad("max_append_bytes", "must be non-zero");
        }
        if self.max_apply_bytes == 0 {
            return bad("max_apply_bytes", "must be non-zero");
        }
        if self.max_pending_reads == 0 {
            return bad("max_pending_reads", "must be non-zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_names_the_field() {
        assert!(RaftConfig::default().validate().is_ok());
        let c = RaftConfig {
            election_rtt: 2,
            heartbeat_rtt: 1,
            ..RaftConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "election_rtt",
                ..
            })
        ));
        let c = RaftConfig {
            replica_id: ReplicaId(0),
            ..RaftConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "replica_id",
                ..
            })
        ));
        let c = RaftConfig {
            lease_read: true,
            check_quorum: false,
            ..RaftConfig::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                field: "lease_read",
                ..
            })
        ));
    }
}
