//! One replica hosted by a NodeHost: its protocol core, its input queues,
//! its replicated state machine and the requests waiting on it.
//!
//! Every map here is ordered (BTreeMap) so that a run driven by the
//! simulator completes requests in the same order every time.
//!
//! Ownership: the core (`core`) is stepped only by the replica's step
//! worker; the apply worker takes the core's lock briefly to apply a config
//! change. The state machine (`rsm`) is driven only by the apply worker (and
//! the snapshot worker for saving). API threads only push into `inbox` and
//! `pending`, both bounded.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use longship_raft::{Entry, Index, Message, Raft, ReplicaId, ShardId, SnapshotMeta, Term};
use longship_storage::logdb::ReplicaLog;
use longship_storage::snapshot::SnapshotStore;
use parking_lot::Mutex;

use crate::config::Config;
use crate::error::Error;
use crate::request::Completer;
use crate::rsm::Rsm;
use crate::sm::{SmResult, StopFlag};

/// A leadership transfer, snapshot or other request from the API.
pub(crate) enum Command {
    Transfer(ReplicaId),
    /// Leave quiesce: the leader's host may be gone (its connection ended).
    Wake,
}

/// Inputs queued for the step worker. Every queue is bounded by the
/// NodeHost config; pushing past a bound fails with `SystemBusy` (requests)
/// or drops (messages; Raft retransmits).
#[derive(Default)]
pub(crate) struct Inbox {
    /// Messages with the number of `ticks` queued before each arrived, so
    /// the step worker replays them in the order they happened.
    pub(crate) messages: Vec<(u64, Message)>,
    pub(crate) proposals: Vec<Entry>,
    pub(crate) config_changes: Vec<Entry>,
    /// Read requests not yet given a read-index context.
    pub(crate) reads: Vec<(Completer<Index>, u64)>,
    pub(crate) commands: Vec<Command>,
    pub(crate) ticks: u64,
    /// Bytes of `messages` (bounded by `max_inbound_queue_bytes`).
    pub(crate) message_bytes: u64,
    /// The replica stopped or failed: reads are refused, not queued.
    pub(crate) closed: bool,
}

/// A read batch waiting for its read index, then for the apply index.
pub(crate) struct PendingRead {
    pub(crate) waiters: Vec<(Completer<Index>, u64)>,
    pub(crate) index: Option<Index>,
}

/// A proposal waiting to be applied.
pub(crate) struct PendingProposal {
    pub(crate) completer: Completer<SmResult>,
    pub(crate) deadline: u64,
}

/// A config change waiting to be applied.
pub(crate) struct PendingConfigChange {
    pub(crate) completer: Completer<()>,
    pub(crate) deadline: u64,
}

/// A requested snapshot ([`crate::NodeHost::request_snapshot`]) waiting
/// for its job. Its own job always runs it with its own options (an
/// export, a compaction override); a request with neither is also answered
/// by any local snapshot saved at or past `min`.
pub(crate) struct PendingSnapshot {
    /// Names the request for its job (`SnapshotJob::Requested`).
    pub(crate) key: u64,
    pub(crate) completer: Completer<crate::types::SnapshotResult>,
    pub(crate) deadline: u64,
    pub(crate) opt: crate::types::SnapshotOption,
    /// Applied index when the request was made.
    pub(crate) min: Index,
}

impl PendingSnapshot {
    /// Whether any local snapshot at or past `min` answers it (no export,
    /// no compaction override of its own).
    pub(crate) fn is_plain(&self) -> bool {
        self.opt.export_path.is_none() && self.opt.compaction_overhead.is_none()
    }
}

/// Requests waiting for an outcome, by key.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) proposals: BTreeMap<u64, PendingProposal>,
    pub(crate) config_changes: BTreeMap<u64, PendingConfigChange>,
    pub(crate) reads: BTreeMap<u64, PendingRead>,
    /// Requested snapshots, each with its own snapshot job (see
    /// [`PendingSnapshot`]).
    pub(crate) snapshots: Vec<PendingSnapshot>,
    /// Set by `terminate`: new requests end at once with `ShardClosed`
    /// (nothing would ever answer or expire them).
    pub(crate) closed: bool,
    /// (deadline, kind, key) of the proposals, config changes and reads
    /// above, soonest first, so that a tick looks only at what is due
    /// instead of every request waiting. Requests completed meanwhile are
    /// skipped when their entry comes due (completing one does not touch
    /// this index); entries live at most one request timeout.
    deadlines: std::collections::BTreeSet<(u64, u8, u64)>,
}

const DUE_PROPOSAL: u8 = 0;
const DUE_CONFIG_CHANGE: u8 = 1;
const DUE_READ: u8 = 2;

impl Pending {
    /// Adds a proposal waiting for its entry to apply.
    pub(crate) fn add_proposal(&mut self, key: u64, p: PendingProposal) {
        self.deadlines.insert((p.deadline, DUE_PROPOSAL, key));
        self.proposals.insert(key, p);
    }

    /// Adds a config change waiting for its entry to apply.
    pub(crate) fn add_config_change(&mut self, key: u64, p: PendingConfigChange) {
        self.deadlines.insert((p.deadline, DUE_CONFIG_CHANGE, key));
        self.config_changes.insert(key, p);
    }

    /// Adds a batch of reads sharing the read-index context `ctx`.
    pub(crate) fn add_reads(&mut self, ctx: u64, r: PendingRead) {
        for (_, deadline) in &r.waiters {
            self.deadlines.insert((*deadline, DUE_READ, ctx));
        }
        self.reads.insert(ctx, r);
    }

    /// Whether no request waits here (nothing to expire).
    pub(crate) fn is_empty(&self) -> bool {
        self.proposals.is_empty()
            && self.config_changes.is_empty()
            && self.reads.is_empty()
            && self.snapshots.is_empty()
    }

    /// Fails every request whose deadline (in ticks) passed. Looks only at
    /// the requests due (and at requested snapshots, a handful at most).
    pub(crate) fn expire(&mut self, now: u64) {
        while let Some(&(deadline, kind, key)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            match kind {
                DUE_PROPOSAL => {
                    if self.proposals.get(&key).is_some_and(|p| p.deadline <= now)
                        && let Some(p) = self.proposals.remove(&key)
                    {
                        p.completer.complete(Err(Error::Timeout));
                    }
                }
                DUE_CONFIG_CHANGE => {
                    if self
                        .config_changes
                        .get(&key)
                        .is_some_and(|p| p.deadline <= now)
                        && let Some(p) = self.config_changes.remove(&key)
                    {
                        p.completer.complete(Err(Error::Timeout));
                    }
                }
                _ => {
                    if let Some(r) = self.reads.get_mut(&key) {
                        r.waiters.retain(|(c, deadline)| {
                            let keep = *deadline > now;
                            if !keep {
                                c.complete(Err(Error::Timeout));
                            }
                            keep
                        });
                        if r.waiters.is_empty() {
                            self.reads.remove(&key);
                        }
                    }
                }
            }
        }
        self.snapshots.retain(|p| {
            let keep = p.deadline > now;
            if !keep {
                p.completer.complete(Err(Error::Timeout));
            }
            keep
        });
    }

    /// Ends the reads still waiting for their read index with `Dropped`
    /// (the leader changed: they went to the old one, whose answer may
    /// never come; a read changes nothing, so it can simply be asked
    /// again) instead of leaving them to their whole timeout. Reads whose
    /// index is known only wait for the local apply and stay.
    pub(crate) fn drop_reads_without_index(&mut self, leader: Option<ReplicaId>) {
        self.reads.retain(|_, pr| {
            if pr.index.is_some() {
                return true;
            }
            for (c, _) in pr.waiters.drain(..) {
                c.complete(Err(Error::Dropped { leader }));
            }
            false
        });
    }

    /// Fails everything (the replica stops).
    pub(crate) fn terminate(&mut self) {
        self.closed = true;
        self.deadlines.clear();
        for (_, p) in std::mem::take(&mut self.proposals) {
            p.completer.complete(Err(Error::ShardClosed));
        }
        for (_, p) in std::mem::take(&mut self.config_changes) {
            p.completer.complete(Err(Error::ShardClosed));
        }
        for (_, r) in std::mem::take(&mut self.reads) {
            for (c, _) in r.waiters {
                c.complete(Err(Error::ShardClosed));
            }
        }
        for p in self.snapshots.drain(..) {
            p.completer.complete(Err(Error::ShardClosed));
        }
    }
}

/// Work handed from the step worker to the apply worker, in log order.
pub(crate) enum ApplyTask {
    /// Committed entries to apply.
    Entries(Vec<Entry>),
    /// A snapshot received from the leader, now durable: recover from it.
    /// Boxed: rare, and ten times the size of the other variant, which
    /// every slot of every replica's queue would otherwise pay.
    Snapshot(Box<SnapshotMeta>),
}

/// What the step worker tracks for quiescing.
#[derive(Default)]
pub(crate) struct QuiesceState {
    pub(crate) idle_ticks: u64,
    pub(crate) quiesced: bool,
}

impl QuiesceState {
    /// Traffic: the shard is busy again.
    pub(crate) fn wake(&mut self) {
        self.idle_ticks = 0;
        self.quiesced = false;
    }
}

/// The core and the step worker's private state of a replica.
pub(crate) struct CoreState {
    pub(crate) raft: Raft<ReplicaLog>,
    pub(crate) quiesce: QuiesceState,
}

/// One replica on this NodeHost.
pub(crate) struct Replica {
    pub(crate) shard_id: ShardId,
    pub(crate) replica_id: ReplicaId,
    pub(crate) config: Config,
    pub(crate) core: Mutex<CoreState>,
    pub(crate) inbox: Mutex<Inbox>,
    pub(crate) pending: Mutex<Pending>,
    pub(crate) apply_queue: Mutex<VecDeque<ApplyTask>>,
    /// The core holds committed entries back until more are applied
    /// (`max_apply_batch_bytes` handed out and not yet applied).
    pub(crate) apply_throttled: AtomicBool,
    pub(crate) rsm: Rsm,
    pub(crate) snapshots: SnapshotStore,
    /// Highest index applied by the state machine (read by the step worker).
    pub(crate) applied_index: AtomicU64,
    /// Index of the newest snapshot taken or installed.
    pub(crate) snapshot_index: AtomicU64,
    /// A snapshot of this replica is being saved.
    pub(crate) snapshotting: AtomicBool,
    /// Applied index at which an automatic snapshot was last scheduled.
    pub(crate) snapshot_tried: AtomicU64,
    /// Leader id and term as last seen by the step worker.
    pub(crate) leader_id: AtomicU64,
    pub(crate) leader_term: AtomicU64,
    /// The leader's host connection ended and no message came from the
    /// leader since (see `leader`).
    pub(crate) leader_suspect: AtomicBool,
    pub(crate) closed: AtomicBool,
    /// The core is quiesced (the step worker's `QuiesceState`, for the ticker).
    pub(crate) quiesced: AtomicBool,
    pub(crate) stop: StopFlag,
    /// Set when the replica failed (state machine error); it stops stepping.
    pub(crate) failed: Mutex<Option<String>>,
    pub(crate) unloaded: AtomicBool,
    /// Held by the apply worker while it applies this replica, and by the
    /// snapshot worker while it captures (or, for regular state machines,
    /// saves) a snapshot.
    pub(crate) apply_lock: Mutex<()>,
    /// An apply round found `apply_lock` taken and skipped this replica:
    /// whoever holds the lock marks the replica for its apply worker again
    /// when it lets go (see `engine::ApplyLock`). Without it the tasks
    /// queued meanwhile wait until something else marks the replica,
    /// which for an idle shard may be never.
    pub(crate) apply_missed: AtomicBool,
    /// Held for the whole save of a snapshot: saves of one replica never
    /// overlap (two could otherwise capture the same index).
    pub(crate) snapshot_save: Mutex<()>,
    /// Addresses of the members, from the core's membership (step worker updates it).
    pub(crate) addresses: parking_lot::RwLock<std::collections::BTreeMap<ReplicaId, String>>,
    /// `config_change_id` of the membership `addresses` was built from.
    pub(crate) addresses_version: AtomicU64,
    /// Last log index when this replica started. Entries up to it were
    /// proposed by an earlier run of the NodeHost, which may have drawn the
    /// same request keys as this run (a configured seed draws the same ids
    /// again), so applying them never completes a request of this run.
    pub(crate) boot_last_index: Index,
}

impl Replica {
    /// The leader as the API reports it: none while the leader is suspect
    /// (its host's connection ended and nothing came from it since), so
    /// that nobody is sent to a host that may be dead.
    pub(crate) fn leader(&self) -> (ReplicaId, Term) {
        let term = Term(self.leader_term.load(Ordering::Acquire));
        if self.leader_suspect.load(Ordering::Acquire) {
            return (ReplicaId(0), term);
        }
        (ReplicaId(self.leader_id.load(Ordering::Acquire)), term)
    }

    pub(crate) fn applied(&self) -> Index {
        Index(self.applied_index.load(Ordering::Acquire))
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ends every request waiting on this replica, and every later one,
    /// with `ShardClosed`: it stopped or failed.
    pub(crate) fn terminate_requests(&self) {
        let reads = {
            let mut inbox = self.inbox.lock();
            inbox.closed = true;
            std::mem::take(&mut inbox.reads)
        };
        for (c, _) in reads {
            c.complete(Err(Error::ShardClosed));
        }
        self.pending.lock().terminate();
    }
}

/// Shared handle.
pub(crate) type ReplicaRef = Arc<Replica>;
