//! Traffic from other NodeHosts: the transport's [`MessageHandler`].
//!
//! Incoming messages are checked and queued at their replicas; on the TCP
//! transport's reader threads, the receiving step worker's cycle is run in
//! place when that worker is idle (run to completion: no thread wake-up
//! between a message's arrival and the protocol's answer to it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use longship_raft::{Message, MessageBatch, MessageType, ReplicaId, ShardId};
use longship_transport::{MessageHandler, SnapshotChunk};

use crate::engine::StepWorker;
use crate::host::HostState;
use crate::metrics::Metrics;

/// Most addresses a replica learns from traffic (senders outside its view
/// of the membership: its leader, candidates of elections held meanwhile).
const MAX_LEARNED_PER_REPLICA: usize = 8;

/// The NodeHost side of the transport.
pub(crate) struct Handler(pub(crate) Arc<HostState>);

impl Handler {
    /// Checks a batch and queues its messages at their replicas; returns
    /// the shards that got messages, by step worker. Nobody is woken.
    fn receive(&self, batch: MessageBatch) -> BTreeMap<usize, Vec<ShardId>> {
        let host = &self.0;
        let mut queued: BTreeMap<usize, Vec<ShardId>> = BTreeMap::new();
        if batch.deployment_id != host.cfg.deployment_id {
            tracing::warn!(from = %batch.source_address, "dropping a batch from another deployment");
            Metrics::add(&host.metrics.messages_dropped, batch.messages.len() as u64);
            return queued;
        }
        Metrics::add(&host.metrics.messages_received, batch.messages.len() as u64);
        for m in batch.messages {
            if m.msg_type.is_local() {
                Metrics::add(&host.metrics.messages_dropped, 1);
                continue;
            }
            // A snapshot with data arrives by a snapshot stream, which
            // delivers its InstallSnapshot itself; in a batch, only a
            // witness's (metadata only) can be valid. Another would make
            // the replica install a snapshot it does not have.
            if m.msg_type == MessageType::InstallSnapshot
                && !(m.snapshot.as_ref().is_some_and(|s| s.witness)
                    && host
                        .replica(m.shard_id)
                        .is_some_and(|r| r.config.is_witness))
            {
                Metrics::add(&host.metrics.messages_dropped, 1);
                continue;
            }
            // The address of a sender outside this replica's view of the
            // membership is learnt from its traffic: a joining replica
            // answering its leader, or a member behind a membership change
            // answering a leader or candidate it does not know yet (the core
            // decides what it takes from such senders). A member's address
            // comes from the membership and is never replaced. Bounded per
            // replica.
            if !batch.source_address.is_empty()
                && let Some(r) = host.replica(m.shard_id)
                && r.replica_id == m.to
                && !r.addresses.read().contains_key(&m.from)
            {
                let key = (m.shard_id, m.from);
                let known = host
                    .learned
                    .read()
                    .get(&key)
                    .is_some_and(|a| *a == batch.source_address);
                if !known {
                    let members = r.addresses.read();
                    let mut learned = host.learned.write();
                    let of_shard: Vec<ReplicaId> = learned
                        .range((m.shard_id, ReplicaId(0))..=(m.shard_id, ReplicaId(u64::MAX)))
                        .map(|(&(_, id), _)| id)
                        .collect();
                    if !learned.contains_key(&key) && of_shard.len() >= MAX_LEARNED_PER_REPLICA {
                        // Full: forget senders that are members by now
                        // (their address is the membership's), else the
                        // lowest id (ids grow, so the oldest sender).
                        let stale: Vec<ReplicaId> = of_shard
                            .iter()
                            .copied()
                            .filter(|id| members.contains_key(id))
                            .collect();
                        let evict = if stale.is_empty() {
                            of_shard[..1].to_vec()
                        } else {
                            stale
                        };
                        for id in evict {
                            learned.remove(&(m.shard_id, id));
                        }
                    }
                    learned.insert(key, batch.source_address.clone());
                }
            }
            let shard = m.shard_id;
            if host.enqueue(m) {
                queued
                    .entry(host.step_worker_of(shard))
                    .or_default()
                    .push(shard);
            }
        }
        queued
    }
}

impl MessageHandler for Handler {
    fn handle_batch(&self, batch: MessageBatch) {
        for (worker, shards) in self.receive(batch) {
            self.0.step_ready[worker].mark_all(shards);
        }
    }

    /// Runs the step cycle of the receiving replicas here, on the
    /// transport's reader thread, when their step worker is idle: a
    /// follower's append then costs no wake-up of a step thread before its
    /// write and acknowledgement, a leader's acknowledgement none before
    /// the commit. A busy worker is only marked (it is running and will
    /// see the shards in its next cycle), and a waiting one is woken when
    /// the cycle cannot be run here (manual mode, or another thread runs
    /// it).
    fn handle_batch_on_io_thread(&self, batch: MessageBatch) {
        let host = &self.0;
        for (worker, shards) in self.receive(batch) {
            if !host.step_ready[worker].mark_all_quiet(shards) {
                continue;
            }
            let ran = host.step_on_receive.load(Ordering::Acquire)
                && StepWorker {
                    host: host.clone(),
                    id: worker,
                }
                .try_run_once();
            if !ran {
                host.step_ready[worker].wake_one();
            }
        }
    }

    /// The replicas whose leader is at `address` suspect it (see
    /// `Replica::leader`), and the quiesced ones wake up: a quiesced
    /// follower counts no election ticks, so without this a leader whose
    /// host died stays the shard's leader until a request arrives.
    fn handle_connection_established(&self, address: &str, snapshot: bool) {
        if let Some(l) = &self.0.listener {
            l.connection_established(address, snapshot);
        }
    }

    fn handle_connection_failed(&self, address: &str, snapshot: bool) {
        if let Some(l) = &self.0.listener {
            l.connection_failed(address, snapshot);
        }
    }

    fn handle_connection_lost(&self, address: &str) {
        let host = &self.0;
        let replicas: Vec<_> = host.replicas.read().values().cloned().collect();
        for r in replicas {
            let leader = ReplicaId(r.leader_id.load(Ordering::Acquire));
            if leader.0 == 0 || leader == r.replica_id {
                continue;
            }
            if host.resolve(&r, leader).is_none_or(|a| a != address) {
                continue;
            }
            // Until it hears from the leader again (or another one wins),
            // the replica does not name it to clients: they would be sent
            // to a host that may be dead.
            r.leader_suspect.store(true, Ordering::Release);
            if r.quiesced.load(Ordering::Relaxed) {
                r.inbox.lock().commands.push(crate::replica::Command::Wake);
                host.mark_step(r.shard_id);
            }
        }
    }

    fn handle_snapshot_chunk(&self, chunk: SnapshotChunk) -> bool {
        match self.0.receive_chunk(chunk) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "snapshot chunk refused");
                Metrics::add(&self.0.metrics.snapshot_chunks_refused, 1);
                false
            }
        }
    }

    fn handle_unreachable(&self, _address: &str, targets: &[(ShardId, ReplicaId)]) {
        for &(shard, replica) in targets {
            if let Some(r) = self.0.replica(shard) {
                let m = Message::new(MessageType::Unreachable, shard, replica, r.replica_id);
                self.0.deliver_local(m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeHostConfig;
    use longship_storage::logdb::MemLogDb;
    use longship_storage::vfs::MemFs;
    use longship_transport::MemNetwork;

    #[test]
    fn addresses_are_learnt_only_for_replicas_hosted_here() {
        let net = MemNetwork::new();
        let cfg = NodeHostConfig {
            node_host_dir: "/nh".into(),
            raft_address: "a:1".into(),
            ..NodeHostConfig::default()
        };
        let deployment_id = cfg.deployment_id;
        let host = Arc::new(HostState::new(
            cfg,
            Arc::new(MemFs::new()),
            Arc::new(MemLogDb::new()),
            Arc::new(net.transport("a:1")),
            None,
            1,
        ));
        let handler = Handler(host.clone());
        for shard in 1..=1000 {
            handler.handle_batch(MessageBatch {
                deployment_id,
                source_address: "b:1".into(),
                bin_ver: longship_raft::MESSAGE_BATCH_VERSION,
                messages: vec![Message::new(
                    MessageType::Heartbeat,
                    ShardId(shard),
                    ReplicaId(2),
                    ReplicaId(1),
                )],
            });
        }
        assert!(host.learned.read().is_empty());
    }
}
