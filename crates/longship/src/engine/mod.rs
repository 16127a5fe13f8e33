//! The workers: step (feed cores, persist, send), write (the log writer of
//! asynchronous log writes), apply (state machines, request completion)
//! and snapshot (save, stream), one file each. Each
//! has a `run_once` that does one bounded round of work and returns whether
//! it did any, so threads loop over it in production and the simulator
//! calls it directly. See docs/engine.md for how work moves between them.

mod apply;
mod snapshot;
mod step;
mod write;

pub(crate) use apply::{ApplyLock, ApplyWorker, recover_verified, restart_point};
pub(crate) use snapshot::SnapshotWorker;
pub(crate) use step::StepWorker;
pub(crate) use write::{LogWriter, WriteQueue};

use longship_raft::{ConfigChangeRejected, Index, Message, MessageType, ProposalError, ReplicaId};

use crate::error::Error;
use crate::host::HostState;
use crate::metrics::Metrics;

/// The API error of a refused proposal; `leader` is the leader known where
/// it was refused (see [`Error::Dropped`]).
pub(crate) fn proposal_error(e: ProposalError, leader: Option<ReplicaId>) -> Error {
    match e {
        ProposalError::NoLeader | ProposalError::TransferInProgress | ProposalError::NotReady => {
            Error::Dropped { leader }
        }
        ProposalError::TooManyUncommittedBytes | ProposalError::TooManyPendingReads => {
            Error::SystemBusy
        }
        ProposalError::PendingConfigChange => Error::PendingConfigChange,
        ProposalError::Invalid => Error::Rejected(
            "the leader found it invalid (a membership change the current membership refuses, \
             or a transfer to a replica that cannot lead)"
                .into(),
        ),
    }
}

/// The API error of a config change the membership refuses.
pub(crate) fn config_change_error(e: ConfigChangeRejected) -> Error {
    match e {
        ConfigChangeRejected::Removed(id) => Error::ReplicaRemoved(id),
        ConfigChangeRejected::Stale { based_on, current } => {
            Error::StaleConfigChange { based_on, current }
        }
        other => Error::Rejected(other.to_string()),
    }
}

/// Completes reads whose index is applied.
pub(crate) fn complete_reads(
    host: &HostState,
    pending: &mut crate::replica::Pending,
    applied: Index,
) {
    pending.reads.retain(|_, pr| match pr.index {
        Some(index) if index <= applied => {
            for (c, _) in pr.waiters.drain(..) {
                c.complete(Ok(index));
                Metrics::add(&host.metrics.reads, 1);
            }
            false
        }
        _ => true,
    });
}

pub(crate) fn report_snapshot_status(host: &HostState, m: &Message, failed: bool) {
    let status = Message {
        reject: failed,
        ..Message::new(MessageType::SnapshotStatus, m.shard_id, m.to, m.from)
    };
    host.deliver_local(status);
}

/// Runs one round of a worker thread's loop. A panic that escaped the
/// per-replica guards (an engine bug) is logged and counted, and the
/// thread goes on with its next round instead of dying silently with the
/// shards it drives. Returns whether the round did work (a panicked round
/// counts as work, so the thread looks again at once).
pub(crate) fn supervised(host: &HostState, round: impl FnOnce() -> bool) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(round)) {
        Ok(did) => did,
        Err(p) => {
            Metrics::add(&host.metrics.worker_panics, 1);
            tracing::error!(
                "a worker round panicked (continuing): {}",
                crate::rsm::panic_message(&*p)
            );
            true
        }
    }
}

/// Fails a replica for `why`: it is stepped and applied no more, its
/// requests end with an error, the failure is counted
/// (`replica_failures`), logged and reported to the event listener
/// (`replica_failed`). The worker goes on with its other shards.
pub(crate) fn fail_replica_with(host: &HostState, r: &crate::replica::Replica, why: String) {
    tracing::error!(shard = %r.shard_id, replica = %r.replica_id, "replica failed: {why}");
    Metrics::add(&host.metrics.replica_failures, 1);
    *r.failed.lock() = Some(why.clone());
    r.terminate_requests();
    if let Some(l) = &host.listener {
        l.replica_failed(r.shard_id, r.replica_id, &why);
    }
}
