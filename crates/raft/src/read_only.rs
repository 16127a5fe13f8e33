//! ReadIndex bookkeeping on the leader (thesis §6.4).

use std::collections::{BTreeSet, VecDeque};

use crate::ids::{Index, ReplicaId};

/// One read waiting for a heartbeat quorum.
#[derive(Clone, Debug)]
pub struct PendingRead {
    /// Caller's context.
    pub context: u64,
    /// Commit index when the read arrived: the read index.
    pub index: Index,
    /// Who asked (the leader itself or a follower).
    pub from: ReplicaId,
    /// Replicas that acknowledged a heartbeat carrying this read's context or a later one.
    pub acks: BTreeSet<ReplicaId>,
}

/// Reads in arrival order. An acknowledgement for a read also confirms every
/// read queued before it, since the heartbeat it answers was sent after them.
#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    queue: VecDeque<PendingRead>,
}

impl ReadOnly {
    /// Queues a read.
    pub fn add(&mut self, context: u64, index: Index, from: ReplicaId, leader: ReplicaId) {
        let mut acks = BTreeSet::new();
        acks.insert(leader);
        self.queue.push_back(PendingRead {
            context,
            index,
            from,
            acks,
        });
    }

    /// Number of queued reads.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no read is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Context of the newest queued read (carried by heartbeats).
    pub fn last_context(&self) -> Option<u64> {
        self.queue.back().map(|r| r.context)
    }

    /// Records that `from` answered a heartbeat carrying `context`; returns
    /// the reads now confirmed by a quorum (as counted by `is_quorum`).
    pub fn recv_ack(
        &mut self,
        from: ReplicaId,
        context: u64,
        is_quorum: impl Fn(&BTreeSet<ReplicaId>) -> bool,
    ) -> Vec<PendingRead> {
        let Some(pos) = self.queue.iter().position(|r| r.context == context) else {
            return Vec::new();
        };
        for r in self.queue.iter_mut().take(pos + 1) {
            r.acks.insert(from);
        }
        // The newest confirmed read confirms all before it.
        let confirmed = (0..=pos).rev().find(|&i| is_quorum(&self.queue[i].acks));
        match confirmed {
            Some(i) => self.queue.drain(..=i).collect(),
            None => Vec::new(),
        }
    }

    /// Drops everything (leadership lost); returns the dropped reads.
    pub fn clear(&mut self) -> Vec<PendingRead> {
        self.queue.drain(..).collect()
    }
}
