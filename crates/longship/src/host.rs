//! The shared state of a NodeHost that every worker and API call uses:
//! replicas, storage, transport, ready sets, logical time, and the handler
//! of incoming traffic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use longship_raft::codec::{Decoder, Limits, decode_message};
use longship_raft::{Message, MessageType, ReplicaId, Rng, ShardId};
use longship_storage::logdb::LogDb;
use longship_storage::snapshot::{SnapshotError, SnapshotInfo, SnapshotReceiver};
use longship_storage::vfs::FileSystem;
use longship_transport::{SnapshotChunk, Transport};
use parking_lot::{Mutex, RwLock};

use crate::config::NodeHostConfig;
use crate::events::EventListener;
use crate::metrics::Metrics;
use crate::replica::{Replica, ReplicaRef};
use crate::work::ReadySet;

/// A snapshot stream being received: (shard, to, from, index).
type ReceiverKey = (ShardId, ReplicaId, ReplicaId, u64);

/// Work for snapshot workers.
pub(crate) enum SnapshotJob {
    /// Save an automatic snapshot of the replica.
    Save(ShardId),
    /// Run the requested snapshot `key` of the replica
    /// (`Pending::snapshots`): a local snapshot with the request's
    /// compaction overhead, or an export that leaves the replica as it is.
    Requested {
        /// The shard.
        shard: ShardId,
        /// The request's key.
        key: u64,
    },
    /// Stream the snapshot named by an `InstallSnapshot` message to `address`.
    Stream {
        /// The `InstallSnapshot` message.
        message: Box<Message>,
        /// Where the follower's host is.
        address: String,
    },
}

/// The state a NodeHost shares with its workers and its transport handler
/// (the `NodeHost` is the API in front of it).
pub(crate) struct HostState {
    pub(crate) cfg: NodeHostConfig,
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) logdb: Arc<dyn LogDb>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) replicas: RwLock<BTreeMap<ShardId, ReplicaRef>>,
    /// Shards being started or stopped (see [`HostState::reserve_shard`]).
    /// Locked before `replicas` when both are held.
    busy_shards: Mutex<std::collections::BTreeSet<ShardId>>,
    /// Addresses learnt from incoming traffic: (shard, replica) -> address.
    pub(crate) learned: RwLock<BTreeMap<(ShardId, ReplicaId), String>>,
    pub(crate) step_ready: Vec<ReadySet>,
    /// Held by step worker `i` for its whole cycle, so that stopping a
    /// replica can wait until no cycle still writes or sends for it.
    pub(crate) step_busy: Vec<Mutex<()>>,
    pub(crate) apply_ready: Vec<ReadySet>,
    pub(crate) snapshot_jobs: Mutex<std::collections::VecDeque<SnapshotJob>>,
    pub(crate) snapshot_ready: ReadySet,
    /// Logical time in ticks (one per RTT).
    pub(crate) now: AtomicU64,
    pub(crate) stopped: AtomicBool,
    pub(crate) rng: Mutex<Rng>,
    pub(crate) listener: Option<Arc<dyn EventListener>>,
    pub(crate) metrics: Metrics,
    /// The sending host's address (empty if unknown), and the receiver
    /// (`None`: the store already holds that snapshot; the stream's data
    /// is skipped).
    receivers: Mutex<BTreeMap<ReceiverKey, (String, Option<SnapshotReceiver>)>>,
    pub(crate) snapshot_root: std::path::PathBuf,
    /// Threaded mode: the transport's reader threads may run an idle step
    /// worker's cycle (see `inbound`). Off in manual mode, where the
    /// simulator alone decides what runs.
    pub(crate) step_on_receive: AtomicBool,
    /// Writes queued for the log writer (`async_log_writes`).
    pub(crate) writes: crate::engine::WriteQueue,
}

/// A quiesced replica gets one tick in this many (its requests expire that
/// much later; it has no other use for ticks).
pub(crate) const QUIESCED_TICK_EVERY: u64 = 10;

/// Bound on snapshot jobs queued.
pub(crate) const MAX_SNAPSHOT_JOBS: usize = 4096;
/// Bound on snapshot streams received at once.
pub(crate) const MAX_SNAPSHOT_RECEIVERS: usize = 64;
/// Bound on snapshot streams received at once from one host, so that one
/// peer (a confused or hostile member) cannot take every slot.
pub(crate) const MAX_SNAPSHOT_RECEIVERS_PER_PEER: usize = 16;

/// A shard being started or stopped: no other start or stop of it runs
/// meanwhile (two starts would both open the state machine and write the
/// bootstrap entries; a start during a stop would load state the stop
/// still changes). Released when dropped.
pub(crate) struct ShardReservation<'a> {
    host: &'a HostState,
    shard: ShardId,
}

impl Drop for ShardReservation<'_> {
    fn drop(&mut self) {
        self.host.busy_shards.lock().remove(&self.shard);
    }
}

impl HostState {
    /// Reserves `shard` for a start: `None` if it runs already or is
    /// being started or stopped.
    pub(crate) fn reserve_shard_for_start(&self, shard: ShardId) -> Option<ShardReservation<'_>> {
        let mut busy = self.busy_shards.lock();
        if busy.contains(&shard) || self.replicas.read().contains_key(&shard) {
            return None;
        }
        busy.insert(shard);
        Some(ShardReservation { host: self, shard })
    }

    /// Ends a start: the replica becomes visible and the reservation is
    /// released at once, so a stop never finds the shard running but
    /// still reserved.
    pub(crate) fn finish_start(&self, reserved: ShardReservation<'_>, replica: ReplicaRef) {
        let mut busy = self.busy_shards.lock();
        self.replicas.write().insert(replica.shard_id, replica);
        busy.remove(&reserved.shard);
        std::mem::forget(reserved);
    }

    /// Takes `shard` out of the running replicas for a stop, reserving it
    /// until the returned reservation is dropped (after the unload).
    pub(crate) fn remove_for_stop(
        &self,
        shard: ShardId,
        replica: Option<ReplicaId>,
    ) -> Option<(ReplicaRef, ShardReservation<'_>)> {
        let mut busy = self.busy_shards.lock();
        let mut map = self.replicas.write();
        if replica.is_some_and(|id| map.get(&shard).is_some_and(|r| r.replica_id != id)) {
            return None;
        }
        let r = map.remove(&shard)?;
        busy.insert(shard);
        Some((r, ShardReservation { host: self, shard }))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: NodeHostConfig,
        fs: Arc<dyn FileSystem>,
        logdb: Arc<dyn LogDb>,
        transport: Arc<dyn Transport>,
        listener: Option<Arc<dyn EventListener>>,
        seed: u64,
    ) -> HostState {
        let snapshot_root = cfg.node_host_dir.join("snapshots");
        HostState {
            step_ready: (0..cfg.step_workers).map(|_| ReadySet::default()).collect(),
            step_busy: (0..cfg.step_workers).map(|_| Mutex::new(())).collect(),
            apply_ready: (0..cfg.apply_workers)
                .map(|_| ReadySet::default())
                .collect(),
            snapshot_jobs: Mutex::new(Default::default()),
            snapshot_ready: ReadySet::default(),
            cfg,
            fs,
            logdb,
            transport,
            replicas: RwLock::new(BTreeMap::new()),
            busy_shards: Mutex::new(Default::default()),
            learned: RwLock::new(BTreeMap::new()),
            now: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            rng: Mutex::new(Rng::new(seed)),
            listener,
            metrics: Metrics::default(),
            receivers: Mutex::new(BTreeMap::new()),
            snapshot_root,
            step_on_receive: AtomicBool::new(false),
            writes: Default::default(),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// A random non-zero 64-bit id (proposal keys, client ids, read contexts).
    pub(crate) fn random_id(&self) -> u64 {
        let mut rng = self.rng.lock();
        loop {
            let v = rng.next_u64();
            if v != 0 && v < longship_raft::SERIES_ID_REGISTER {
                return v;
            }
        }
    }

    pub(crate) fn replica(&self, shard: ShardId) -> Option<ReplicaRef> {
        self.replicas.read().get(&shard).cloned()
    }

    pub(crate) fn step_worker_of(&self, shard: ShardId) -> usize {
        (shard.0 % self.step_ready.len() as u64) as usize
    }

    pub(crate) fn apply_worker_of(&self, shard: ShardId) -> usize {
        (shard.0 % self.apply_ready.len() as u64) as usize
    }

    pub(crate) fn mark_step(&self, shard: ShardId) {
        self.step_ready[self.step_worker_of(shard)].mark(shard);
    }

    pub(crate) fn mark_apply(&self, shard: ShardId) {
        self.apply_ready[self.apply_worker_of(shard)].mark(shard);
    }

    pub(crate) fn push_snapshot_job(&self, job: SnapshotJob) -> bool {
        let mut q = self.snapshot_jobs.lock();
        if q.len() >= MAX_SNAPSHOT_JOBS {
            return false;
        }
        q.push_back(job);
        drop(q);
        self.snapshot_ready.mark(ShardId(0));
        true
    }

    /// Advances logical time by one tick: every replica gets a tick.
    pub(crate) fn tick(&self) {
        let now = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        Metrics::add(&self.metrics.ticks, 1);
        let mut by_worker: Vec<Vec<ShardId>> = vec![Vec::new(); self.step_ready.len()];
        for r in self.replicas.read().values() {
            // A quiesced replica does nothing on a tick but expire requests
            // (any traffic wakes it): it gets every QUIESCED_TICK_EVERY-th,
            // and none while no request waits on it, so thousands of idle
            // shards cost the ticker a flag check each.
            if r.quiesced.load(Ordering::Relaxed)
                && (!now.is_multiple_of(QUIESCED_TICK_EVERY) || r.pending.lock().is_empty())
            {
                continue;
            }
            r.inbox.lock().ticks += 1;
            by_worker[self.step_worker_of(r.shard_id)].push(r.shard_id);
        }
        // One wake-up per worker and tick, not one per replica.
        for (ready, shards) in self.step_ready.iter().zip(by_worker) {
            ready.mark_all(shards);
        }
    }

    /// The address of (shard, replica): from the replica's membership, else
    /// from traffic received from it.
    pub(crate) fn resolve(&self, replica: &Replica, to: ReplicaId) -> Option<String> {
        if let Some(a) = replica.addresses.read().get(&to) {
            return Some(a.clone());
        }
        self.learned.read().get(&(replica.shard_id, to)).cloned()
    }

    /// Queues a message for a local replica (bounded; drops when full)
    /// and marks the replica for its step worker.
    pub(crate) fn deliver_local(&self, m: Message) -> bool {
        let shard = m.shard_id;
        let queued = self.enqueue(m);
        if queued {
            self.mark_step(shard);
        }
        queued
    }

    /// Queues a message for a local replica (bounded; drops when full);
    /// the caller marks the replica for its step worker.
    pub(crate) fn enqueue(&self, m: Message) -> bool {
        let Some(r) = self.replica(m.shard_id) else {
            Metrics::add(&self.metrics.messages_dropped, 1);
            return false;
        };
        if (m.to != r.replica_id && !m.msg_type.is_local()) || r.is_closed() {
            Metrics::add(&self.metrics.messages_dropped, 1);
            return false;
        }
        {
            let mut inbox = r.inbox.lock();
            // A snapshot stream's outcome is never dropped: it is sent once
            // (no retransmission), and the leader waits for it before it
            // sends that follower anything again. One per stream job: bounded.
            let bytes = m.size_bytes();
            if (inbox.messages.len() >= self.cfg.max_inbound_queue
                || inbox.message_bytes.saturating_add(bytes) > self.cfg.max_inbound_queue_bytes)
                && m.msg_type != MessageType::SnapshotStatus
            {
                Metrics::add(&self.metrics.messages_dropped, 1);
                return false;
            }
            inbox.message_bytes = inbox.message_bytes.saturating_add(bytes);
            let at = inbox.ticks;
            inbox.messages.push((at, m));
        }
        true
    }

    /// Drops the snapshot streams to a replica that stops: nothing would
    /// finish them (their chunks are refused), and they hold stream slots.
    pub(crate) fn drop_receivers(&self, shard: ShardId) {
        self.receivers.lock().retain(|k, _| k.0 != shard);
    }

    fn receiver_key(c: &SnapshotChunk) -> ReceiverKey {
        (c.shard_id, c.to, c.from, c.index.0)
    }

    pub(crate) fn receive_chunk(&self, chunk: SnapshotChunk) -> Result<(), String> {
        if chunk.deployment_id != self.cfg.deployment_id {
            return Err(format!(
                "snapshot chunk from deployment {}",
                chunk.deployment_id
            ));
        }
        let r = self
            .replica(chunk.shard_id)
            .filter(|r| r.replica_id == chunk.to && !r.is_closed())
            .ok_or_else(|| {
                format!(
                    "snapshot for unknown replica {}/{}",
                    chunk.shard_id, chunk.to
                )
            })?;
        let key = HostState::receiver_key(&chunk);
        // The lock guards the map only: chunks are written, files created
        // and synced without it, so one slow disk write (or fsync) of one
        // stream does not hold up every other stream to this host. A
        // stream's chunks arrive one after another on one connection, so
        // while its receiver is out of the map nothing else wants it.
        let peer = self.resolve(&r, chunk.from).unwrap_or_default();
        let rx = if chunk.chunk_id == 0 {
            {
                // A replica receives one snapshot at a time: a new stream
                // to it replaces any older one, whose sender may be gone
                // for good (kept, such streams filled every slot and no
                // replica on this host could receive a snapshot again).
                let mut receivers = self.receivers.lock();
                receivers.retain(|k, _| (k.0, k.1) != (chunk.shard_id, chunk.to));
                if receivers.len() >= MAX_SNAPSHOT_RECEIVERS {
                    return Err("too many snapshot streams".into());
                }
                if receivers.values().filter(|(p, _)| *p == peer).count()
                    >= MAX_SNAPSHOT_RECEIVERS_PER_PEER
                {
                    return Err(format!("too many snapshot streams from {peer}"));
                }
            }
            let path = r.snapshots.dir().to_path_buf();
            let info = SnapshotInfo::decode(&chunk.info, &path).map_err(|e| e.to_string())?;
            if info.meta.index != chunk.index || info.shard != chunk.shard_id {
                return Err("snapshot chunk does not match its description".into());
            }
            // What the stream announces is bounded before any byte of it
            // is written (a peer cannot make this host fill its disk).
            let announced = info
                .external_files
                .iter()
                .fold(info.data_size_bytes, |t, f| t.saturating_add(f.size_bytes));
            if announced > self.cfg.max_snapshot_bytes {
                return Err(format!(
                    "snapshot of {announced} bytes is over max_snapshot_bytes ({})",
                    self.cfg.max_snapshot_bytes
                ));
            }
            match r.snapshots.begin_receive(info) {
                Ok(rx) => Some(rx),
                // A valid copy is already in the store: received before but
                // never installed (a crash before log storage recorded it, a
                // dropped InstallSnapshot, a failed directory sync). The
                // state at a committed index is unique, so it is reused;
                // refusing it stalled the replica for as long as the
                // leader's snapshot stayed at this index. Its rename into
                // place may not be durable yet (the directory sync that
                // failed): make it so before log storage can record it.
                Err(SnapshotError::AlreadyExists(_)) => {
                    r.snapshots
                        .file_system()
                        .sync_dir(r.snapshots.dir())
                        .map_err(|e| e.to_string())?;
                    None
                }
                Err(e) => return Err(e.to_string()),
            }
        } else {
            match self.receivers.lock().remove(&key) {
                Some((_, rx)) => rx,
                None => return Err("snapshot chunk without a stream".into()),
            }
        };
        let mut rx = rx;
        if let Some(rx) = &mut rx
            && !chunk.data.is_empty()
        {
            // A failed write (a full disk) ends the stream; dropping the
            // receiver removes what it wrote.
            rx.write_chunk(&chunk.file_name, chunk.offset, &chunk.data)
                .map_err(|e| e.to_string())?;
        }
        if !chunk.last {
            let mut receivers = self.receivers.lock();
            // Not if the replica stopped meanwhile (its streams were
            // dropped) or a newer stream to it began.
            if r.is_closed()
                || receivers
                    .keys()
                    .any(|k| (k.0, k.1) == (chunk.shard_id, chunk.to))
            {
                return Err("snapshot stream superseded or its replica stopped".into());
            }
            if chunk.chunk_id == 0 && receivers.len() >= MAX_SNAPSHOT_RECEIVERS {
                return Err("too many snapshot streams".into());
            }
            receivers.insert(key, (peer, rx));
            return Ok(());
        }
        let index = match rx {
            Some(rx) => rx.finish().map_err(|e| e.to_string())?.meta.index,
            None => chunk.index,
        };
        let mut d = Decoder::new(&chunk.message, Limits::default());
        let m = decode_message(&mut d).map_err(|e| e.to_string())?;
        // It must install this stream's snapshot on this stream's replica.
        if m.msg_type != MessageType::InstallSnapshot
            || (m.shard_id, m.to, m.from) != (chunk.shard_id, chunk.to, chunk.from)
            || m.snapshot.as_ref().map(|s| (s.index, s.term, s.witness))
                != Some((index, chunk.term, false))
        {
            return Err("snapshot stream ends without its InstallSnapshot message".into());
        }
        Metrics::add(&self.metrics.snapshots_received, 1);
        if let Some(l) = &self.listener {
            l.snapshot_received(crate::events::SnapshotEvent {
                shard_id: chunk.shard_id,
                replica_id: chunk.to,
                index: chunk.index,
            });
        }
        self.deliver_local(m);
        Ok(())
    }
}
