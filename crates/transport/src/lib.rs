//! `longship-transport`: how NodeHosts exchange Raft messages and snapshots.
//!
//! A [`Transport`] carries [`MessageBatch`]es (the messages of many shards
//! bound for one host) and snapshot [`SnapshotChunk`]s to other hosts, named
//! by their raft address. Incoming traffic is handed to a
//! [`MessageHandler`], which the NodeHost implements. This crate never calls
//! the protocol core: it only moves bytes and values.
//!
//! [`TcpTransport`] is the real one: batched frames over a few TCP
//! connections per remote host, optional mutual TLS, snapshot streams on
//! their own connections. [`MemTransport`] connects NodeHosts in one process through a shared
//! [`MemNetwork`], for tests and the simulator.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
mod mem;
mod tcp;
mod tls;

pub use mem::{InFlight, MemNetwork, MemTransport, Packet};
pub use tcp::{TcpConfig, TcpError, TcpStats, TcpTransport};
pub use tls::{TlsError, TlsPaths};

use longship_raft::{Index, MessageBatch, ReplicaId, ShardId, Term};

/// One piece of a snapshot streamed from a leader to a follower.
///
/// A stream is a sequence of chunks with `chunk_id` 0, 1, 2, ... ; the first
/// carries the snapshot's encoded description (`info`), the last has
/// `last == true` and carries the `InstallSnapshot` message to deliver once
/// the snapshot is complete and verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// Deployment id of the sender.
    pub deployment_id: u64,
    /// The shard.
    pub shard_id: ShardId,
    /// Receiving replica.
    pub to: ReplicaId,
    /// Sending replica.
    pub from: ReplicaId,
    /// Snapshot index.
    pub index: Index,
    /// Snapshot term.
    pub term: Term,
    /// Position of this chunk in the stream.
    pub chunk_id: u64,
    /// Encoded snapshot description (first chunk only).
    pub info: Vec<u8>,
    /// File within the snapshot the bytes belong to.
    pub file_name: String,
    /// Offset of `data` within that file.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// Last chunk of the stream.
    pub last: bool,
    /// On the last chunk: the encoded `InstallSnapshot` message.
    pub message: Vec<u8>,
}

/// Receives what other hosts send. Implemented by the NodeHost.
pub trait MessageHandler: Send + Sync {
    /// A batch of messages arrived.
    fn handle_batch(&self, batch: MessageBatch);
    /// A batch arrived on a thread the transport owns, which may do the
    /// protocol work the batch causes (including a log write) before it
    /// reads on: the receiver may run that work to completion here instead
    /// of waking another thread for it. The TCP transport's readers call
    /// this; the default is [`handle_batch`](Self::handle_batch).
    fn handle_batch_on_io_thread(&self, batch: MessageBatch) {
        self.handle_batch(batch)
    }
    /// An inbound connection from the host at `address` (the source
    /// address its batches named) ended: the peer may be gone. Quiesced
    /// replicas that follow a leader there should wake up and watch it
    /// again (a quiesced follower does not count election ticks). Default:
    /// nothing.
    fn handle_connection_lost(&self, _address: &str) {}
    /// An outbound connection to the host at `address` was made (`snapshot`:
    /// one that carries a snapshot stream). Transports without connections
    /// never call it. Default: nothing.
    fn handle_connection_established(&self, _address: &str, _snapshot: bool) {}
    /// An outbound connection to the host at `address` could not be made
    /// (`snapshot` as above); the transport retries with backoff. Default:
    /// nothing.
    fn handle_connection_failed(&self, _address: &str, _snapshot: bool) {}
    /// A snapshot chunk arrived. Returns false to abort the stream (the
    /// sender then reports the snapshot failed).
    fn handle_snapshot_chunk(&self, chunk: SnapshotChunk) -> bool;
    /// Messages to `address` could not be delivered: the listed shard and
    /// replica pairs should treat the peer as unreachable.
    fn handle_unreachable(&self, address: &str, targets: &[(ShardId, ReplicaId)]);
}

/// Why a send did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer's queue is full; the messages were dropped (Raft retransmits).
    #[error("send queue to {0} is full")]
    QueueFull(String),
    /// The peer cannot be reached now.
    #[error("peer {0} unreachable")]
    Unreachable(String),
    /// The transport is closed.
    #[error("transport closed")]
    Closed,
}

/// Moves batches and snapshot chunks between NodeHosts.
pub trait Transport: Send + Sync {
    /// The address this transport receives on.
    fn local_address(&self) -> &str;
    /// Starts receiving: incoming traffic goes to `handler`.
    fn start(&self, handler: std::sync::Arc<dyn MessageHandler>) -> Result<(), SendError>;
    /// Sends a batch to the host at `address`. Never blocks on the network;
    /// a full queue drops the batch.
    fn send(&self, address: &str, batch: MessageBatch) -> Result<(), SendError>;
    /// Sends one chunk of a snapshot stream (may block for flow control).
    fn send_snapshot_chunk(&self, address: &str, chunk: SnapshotChunk) -> Result<(), SendError>;
    /// Gives up a snapshot stream that will get no more chunks (the sender
    /// failed partway), releasing whatever it holds. The default does nothing.
    fn cancel_snapshot_stream(
        &self,
        _address: &str,
        _shard_id: ShardId,
        _from: ReplicaId,
        _to: ReplicaId,
        _index: Index,
    ) {
    }
    /// Stops sending and receiving.
    fn close(&self);
}
