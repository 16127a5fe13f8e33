//! How requests enter a replica: proposals and reads are queued in its
//! inbox and bookkept in its pending maps, and its step worker is marked
//! ready. Shared by [`NodeHost`](crate::NodeHost) and [`NodeUser`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use longship_raft::{Entry, EntryType, Index, ShardId};

use crate::error::{Error, Result};
use crate::host::HostState;
use crate::metrics::Metrics;
use crate::replica::{PendingProposal, Replica, ReplicaRef};
use crate::request::RequestHandle;
use crate::session::Session;
use crate::sm::SmResult;

/// The logical time (in ticks) by which a request with `timeout` expires.
pub(crate) fn deadline(host: &HostState, timeout: Duration) -> Result<u64> {
    let rtt = host.cfg.rtt_ms;
    // Saturating: Duration::MAX may stand for "no timeout".
    let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    if ms < rtt {
        return Err(Error::TimeoutTooSmall { rtt_ms: rtt });
    }
    Ok(host
        .now()
        .saturating_add(ms.div_ceil(rtt))
        .saturating_add(1))
}

pub(crate) fn propose_raw(
    host: &HostState,
    r: &Replica,
    session: &Session,
    cmd: Bytes,
    deadline: u64,
) -> Result<RequestHandle<SmResult>> {
    propose_entry(host, r, session, EntryType::Normal, cmd, deadline)
}

/// Queues an entry of `entry_type` (`Normal`, or `Encoded` with a
/// compressed payload) for the replica's next step cycle.
fn propose_entry(
    host: &HostState,
    r: &Replica,
    session: &Session,
    entry_type: EntryType,
    cmd: Bytes,
    deadline: u64,
) -> Result<RequestHandle<SmResult>> {
    holds_data(r)?;
    let key = host.random_id();
    let entry = Entry {
        entry_type,
        key,
        client_id: session.client_id,
        series_id: session.series_id,
        responded_to: session.responded_to,
        cmd,
        ..Entry::default()
    };
    let (handle, completer) = crate::request::timed_request(&host.metrics.latencies.proposal);
    {
        let mut pending = r.pending.lock();
        if pending.closed {
            return Err(Error::ShardClosed);
        }
        pending.add_proposal(
            key,
            PendingProposal {
                completer,
                deadline,
            },
        );
    }
    {
        let mut inbox = r.inbox.lock();
        if inbox.proposals.len() >= host.cfg.max_proposal_queue {
            drop(inbox);
            r.pending.lock().proposals.remove(&key);
            Metrics::add(&host.metrics.proposals_busy, 1);
            return Err(Error::SystemBusy);
        }
        inbox.proposals.push(entry);
    }
    Metrics::add(&host.metrics.proposals, 1);
    host.mark_step(r.shard_id);
    Ok(handle)
}

pub(crate) fn propose_on(
    host: &HostState,
    r: &Replica,
    session: &Session,
    cmd: Bytes,
    _timeout: Duration,
    deadline: u64,
) -> Result<RequestHandle<SmResult>> {
    // An entry must fit one transport frame, or no follower could ever
    // receive it and the shard's replication would stall behind it.
    let max = host
        .cfg
        .max_proposal_bytes
        .min(host.cfg.max_frame_bytes as usize / 2);
    if cmd.len() > max {
        return Err(Error::PayloadTooBig {
            size: cmd.len(),
            max,
        });
    }
    if !session.valid_for_proposal(r.shard_id) {
        return Err(Error::InvalidSession);
    }
    // Compressed here, on the proposing thread (the step worker never
    // spends time on it); the entry type records it for every reader.
    match crate::compression::compress_entry_payload(r.config.entry_compression, &cmd) {
        Some(payload) => propose_entry(
            host,
            r,
            session,
            EntryType::Encoded,
            Bytes::from(payload),
            deadline,
        ),
        None => propose_raw(host, r, session, cmd, deadline),
    }
}

/// Refuses what needs the state machine on a witness (it has none: its
/// state machine never sees an entry, and would answer reads from nothing).
pub(crate) fn holds_data(r: &Replica) -> Result<()> {
    if r.config.is_witness {
        return Err(Error::Witness(r.shard_id));
    }
    Ok(())
}

/// Queries the state machine of a replica that holds data.
pub(crate) fn lookup_on(r: &Replica, query: &[u8]) -> Result<Vec<u8>> {
    holds_data(r)?;
    r.rsm.sm.lookup(query).map_err(|e| Error::StateMachine(e.0))
}

/// A read index on any replica (a witness's serves membership queries:
/// it applies membership changes like every replica).
pub(crate) fn read_index_on(
    host: &HostState,
    r: &Replica,
    deadline: u64,
) -> Result<RequestHandle<Index>> {
    let (handle, completer) = crate::request::timed_request(&host.metrics.latencies.read);
    {
        let mut inbox = r.inbox.lock();
        if inbox.closed {
            return Err(Error::ShardClosed);
        }
        if inbox.reads.len() >= host.cfg.max_read_queue {
            return Err(Error::SystemBusy);
        }
        inbox.reads.push((completer, deadline));
    }
    host.mark_step(r.shard_id);
    Ok(handle)
}

/// A handle bound to one shard's local replica: proposes and reads without
/// looking the replica up each time (bulk loads).
pub struct NodeUser {
    pub(crate) host: Arc<HostState>,
    pub(crate) replica: ReplicaRef,
}

impl NodeUser {
    fn deadline(&self, timeout: Duration) -> Result<u64> {
        let d = deadline(&self.host, timeout)?;
        if self.host.is_stopped() {
            return Err(Error::Stopped);
        }
        if self.replica.is_closed() {
            return Err(Error::ShardClosed);
        }
        Ok(d)
    }

    /// The shard.
    pub fn shard_id(&self) -> ShardId {
        self.replica.shard_id
    }

    /// As [`NodeHost::propose`].
    pub fn propose(
        &self,
        session: &Session,
        cmd: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<RequestHandle<SmResult>> {
        let deadline = self.deadline(timeout)?;
        propose_on(
            &self.host,
            &self.replica,
            session,
            cmd.into(),
            timeout,
            deadline,
        )
    }

    /// As [`NodeHost::read_index`].
    pub fn read_index(&self, timeout: Duration) -> Result<RequestHandle<Index>> {
        let deadline = self.deadline(timeout)?;
        holds_data(&self.replica)?;
        read_index_on(&self.host, &self.replica, deadline)
    }

    /// As [`NodeHost::read_local`].
    pub fn read_local(&self, query: &[u8]) -> Result<Vec<u8>> {
        lookup_on(&self.replica, query)
    }
}
