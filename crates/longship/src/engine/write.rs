//! The log writer (`NodeHostConfig::async_log_writes`): takes the writes
//! the step workers queued, persists them with one fsync, sends what waited
//! for them, and reports them to the cores.
//!
//! A step worker's cycle ends once its write is queued: the shards it
//! drives are stepped again (new proposals replicated, acknowledgements
//! counted) while the fsync runs. The rules that make this safe are the
//! core's (`longship_raft::RaftConfig::async_storage_writes`); the writer
//! keeps the engine's half of them:
//!
//! - writes complete in the order they were queued: one queue and one
//!   writer per NodeHost, and a round takes a prefix of the queue;
//! - an update's `persisted_messages` leave only after its write (and so
//!   every earlier one) is durable, sent from this thread;
//! - the core learns of a write only after it is durable
//!   ([`Raft::persisted`](longship_raft::Raft::persisted));
//! - a failed write fails the replicas of the round: nothing that depended
//!   on it leaves;
//! - a replica is unloaded only once no write of it is queued or in a
//!   round ([`WriteQueue::holds`], `busy`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use longship_raft::{Entry, Update};
use parking_lot::{Condvar, Mutex};

use super::StepWorker;
use crate::host::HostState;
use crate::replica::{Replica, ReplicaRef};

/// Entry bytes queued before a step worker waits for the writer (threaded
/// mode): bounds the memory of writes in flight.
const MAX_QUEUED_BYTES: u64 = 64 << 20;
/// Cycles' writes queued before a step worker waits for the writer.
const MAX_QUEUED_BATCHES: usize = 4096;
/// Entry bytes one writer round takes at most (at least one batch).
const MAX_ROUND_BYTES: u64 = 32 << 20;

/// One step cycle's updates, in the order they were taken.
type Batch = Vec<(ReplicaRef, Update)>;

thread_local! {
    /// Set during a writer round: a step cycle the round runs must not
    /// wait for room only the writer can make, nor start a round itself.
    static IN_WRITER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[derive(Default)]
struct Queued {
    batches: VecDeque<(Batch, u64)>,
    bytes: u64,
}

/// The writes queued for the log writer, oldest first.
#[derive(Default)]
pub(crate) struct WriteQueue {
    queued: Mutex<Queued>,
    /// The writer waits here for work.
    ready: Condvar,
    /// Step workers wait here for room.
    room: Condvar,
    /// Held for a whole writer round (see `NodeHost::unload`).
    pub(crate) busy: Mutex<()>,
}

impl WriteQueue {
    /// Queues a cycle's updates. With `wait_for_room`, first waits while
    /// the queue is full (threaded mode; the simulator never waits, it
    /// runs the writer itself).
    pub(crate) fn push(&self, batch: Batch, wait_for_room: bool) {
        if batch.is_empty() {
            return;
        }
        let bytes: u64 = batch
            .iter()
            .flat_map(|(_, u)| u.entries.iter())
            .map(Entry::size_bytes)
            .sum();
        let mut q = self.queued.lock();
        if wait_for_room && !IN_WRITER.with(|w| w.get()) {
            while !q.batches.is_empty()
                && (q.bytes + bytes > MAX_QUEUED_BYTES || q.batches.len() >= MAX_QUEUED_BATCHES)
            {
                self.room.wait_for(&mut q, Duration::from_millis(100));
            }
        }
        q.bytes += bytes;
        q.batches.push_back((batch, bytes));
    }

    /// Wakes the writer thread if it waits for work.
    pub(crate) fn notify(&self) {
        self.ready.notify_one();
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.queued.lock().batches.is_empty()
    }

    /// Takes the oldest batches, at most `max_bytes` of entries (at least
    /// one batch).
    fn take(&self, max_bytes: u64) -> Batch {
        let mut q = self.queued.lock();
        let mut out = Vec::new();
        let mut taken = 0u64;
        while let Some((_, bytes)) = q.batches.front() {
            if !out.is_empty() && taken + bytes > max_bytes {
                break;
            }
            let (batch, bytes) = q.batches.pop_front().expect("front exists");
            taken += bytes;
            q.bytes -= bytes;
            out.extend(batch);
        }
        drop(q);
        if !out.is_empty() {
            self.room.notify_all();
        }
        out
    }

    /// Whether a write of `r` is queued.
    pub(crate) fn holds(&self, r: &Replica) -> bool {
        self.queued
            .lock()
            .batches
            .iter()
            .any(|(b, _)| b.iter().any(|(x, _)| std::ptr::eq(&**x, r)))
    }

    /// Waits until something is queued or `timeout` passes.
    pub(crate) fn wait(&self, timeout: Duration) {
        let mut q = self.queued.lock();
        if q.batches.is_empty() {
            self.ready.wait_for(&mut q, timeout);
        }
    }

    /// Wakes the writer (shutdown).
    pub(crate) fn wake(&self) {
        self.ready.notify_all();
        self.room.notify_all();
    }
}

/// Persists queued writes; one per NodeHost.
pub(crate) struct LogWriter {
    pub(crate) host: Arc<HostState>,
}

impl LogWriter {
    /// One round: takes the queued writes, persists them with one fsync,
    /// sends what waited for them, reports them to the cores. Returns
    /// whether there was anything to write.
    pub(crate) fn run_once(&self) -> bool {
        let _round = self.host.writes.busy.lock();
        self.round()
    }

    /// Runs a round unless one runs already (then returns false: that
    /// round's thread takes what is queued next).
    pub(crate) fn try_run_once(&self) -> bool {
        let Some(_round) = self.host.writes.busy.try_lock() else {
            return false;
        };
        self.round()
    }

    /// Whether the current thread is in a writer round.
    pub(crate) fn in_round() -> bool {
        IN_WRITER.with(|w| w.get())
    }

    /// The body of a round; the caller holds `writes.busy`.
    fn round(&self) -> bool {
        IN_WRITER.with(|w| w.set(true));
        let did = self.round_inner();
        IN_WRITER.with(|w| w.set(false));
        did
    }

    fn round_inner(&self) -> bool {
        let host = &self.host;
        let mut tasks = host.writes.take(MAX_ROUND_BYTES);
        if tasks.is_empty() {
            return false;
        }
        // A replica failed since its write was queued: nothing of it is
        // written or sent any more.
        tasks.retain(|(r, _)| r.failed.lock().is_none());
        // Writes holding only a commit index need no fsync (it is volatile
        // state, relearnt from the leader); the core counts them durable
        // for nothing but term and vote, which they do not change.
        let must_sync = tasks.iter().any(|(_, u)| u.write.must_sync);
        let stepper = StepWorker {
            host: host.clone(),
            id: 0,
        };
        if must_sync && !stepper.persist(&mut tasks) {
            return true;
        }
        let mut ready = vec![Vec::new(); host.step_ready.len()];
        for shard in stepper.complete_writes(tasks) {
            ready[host.step_worker_of(shard)].push(shard);
        }
        // Replicas the writes made ready (a leader's commit, a snapshot
        // barrier lifted): in threaded mode, step them here if their worker
        // is idle, which saves waking it.
        let inline = host
            .step_on_receive
            .load(std::sync::atomic::Ordering::Acquire);
        for (id, shards) in ready.into_iter().enumerate() {
            if shards.is_empty() {
                continue;
            }
            if !inline {
                host.step_ready[id].mark_all(shards);
                continue;
            }
            if host.step_ready[id].mark_all_quiet(shards) {
                let w = StepWorker {
                    host: host.clone(),
                    id,
                };
                if !w.try_run_once() {
                    // Its cycle is running: it sees the marks when it ends.
                    host.step_ready[id].wake_one();
                }
            }
        }
        true
    }
}
