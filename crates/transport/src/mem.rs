//! In-memory transport: NodeHosts of one process share a [`MemNetwork`].
//!
//! Delivery is synchronous (the sender's thread runs the receiver's
//! handler, which only queues work), or, in `queued` mode, deferred until
//! [`MemNetwork::deliver_all`] so that a single-threaded simulator decides
//! when and in what order traffic arrives, and can cut links.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use longship_raft::MessageBatch;
use parking_lot::Mutex;

use crate::{MessageHandler, SendError, SnapshotChunk, Transport};

/// Something in flight in a queued network.
#[derive(Clone, Debug)]
pub enum Packet {
    /// A message batch.
    Batch(MessageBatch),
    /// A snapshot chunk.
    Chunk(SnapshotChunk),
}

/// One packet in flight between two addresses.
#[derive(Clone, Debug)]
pub struct InFlight {
    /// Sender address.
    pub from: String,
    /// Receiver address.
    pub to: String,
    /// What is sent.
    pub packet: Packet,
}

#[derive(Default)]
struct NetworkState {
    handlers: BTreeMap<String, Arc<dyn MessageHandler>>,
    /// Cut links (from, to).
    cut: BTreeSet<(String, String)>,
    queued: bool,
    in_flight: VecDeque<InFlight>,
    /// Bound on `in_flight` packets; beyond it new packets are dropped.
    max_in_flight: usize,
}

/// The shared medium of in-memory transports.
#[derive(Clone, Default)]
pub struct MemNetwork {
    state: Arc<Mutex<NetworkState>>,
}

impl MemNetwork {
    /// A network that delivers at once, in the sender's thread.
    pub fn new() -> MemNetwork {
        MemNetwork::default()
    }

    /// A network that holds packets until [`deliver_all`](Self::deliver_all)
    /// or [`take_in_flight`](Self::take_in_flight) (for the simulator).
    /// At most `max_in_flight` packets are held; more are dropped.
    pub fn queued(max_in_flight: usize) -> MemNetwork {
        let n = MemNetwork::default();
        {
            let mut s = n.state.lock();
            s.queued = true;
            s.max_in_flight = max_in_flight;
        }
        n
    }

    /// A transport for the host at `address` on this network.
    pub fn transport(&self, address: &str) -> MemTransport {
        MemTransport {
            network: self.clone(),
            address: address.to_string(),
        }
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&self, from: &str, to: &str) {
        self.state
            .lock()
            .cut
            .insert((from.to_string(), to.to_string()));
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.state.lock().cut.clear();
    }

    /// Removes a host from the network (it crashed or closed).
    pub fn unregister(&self, address: &str) {
        self.state.lock().handlers.remove(address);
    }

    /// Queued mode: takes every packet in flight, in send order.
    pub fn take_in_flight(&self) -> Vec<InFlight> {
        self.state.lock().in_flight.drain(..).collect()
    }

    /// Queued mode: delivers one packet now (if its link is up and its
    /// receiver registered). Returns whether it was delivered.
    pub fn deliver(&self, p: InFlight) -> bool {
        let handler = {
            let s = self.state.lock();
            if s.cut.contains(&(p.from.clone(), p.to.clone())) {
                return false;
            }
            s.handlers.get(&p.to).cloned()
        };
        let Some(h) = handler else { return false };
        match p.packet {
            Packet::Batch(b) => h.handle_batch(b),
            Packet::Chunk(c) => {
                h.handle_snapshot_chunk(c);
            }
        }
        true
    }

    /// Queued mode: delivers everything in flight, in order.
    pub fn deliver_all(&self) -> usize {
        let mut n = 0;
        for p in self.take_in_flight() {
            if self.deliver(p) {
                n += 1;
            }
        }
        n
    }

    fn route(&self, from: &str, to: &str, packet: Packet) -> Result<bool, SendError> {
        let handler = {
            let mut s = self.state.lock();
            if s.cut.contains(&(from.to_string(), to.to_string())) {
                return Err(SendError::Unreachable(to.to_string()));
            }
            if s.queued {
                if s.in_flight.len() >= s.max_in_flight {
                    return Err(SendError::QueueFull(to.to_string()));
                }
                s.in_flight.push_back(InFlight {
                    from: from.to_string(),
                    to: to.to_string(),
                    packet,
                });
                return Ok(true);
            }
            match s.handlers.get(to) {
                Some(h) => h.clone(),
                None => return Err(SendError::Unreachable(to.to_string())),
            }
        };
        Ok(match packet {
            Packet::Batch(b) => {
                handler.handle_batch(b);
                true
            }
            Packet::Chunk(c) => handler.handle_snapshot_chunk(c),
        })
    }
}

/// A NodeHost's endpoint on a [`MemNetwork`].
#[derive(Clone)]
pub struct MemTransport {
    network: MemNetwork,
    address: String,
}

impl Transport for MemTransport {
    fn local_address(&self) -> &str {
        &self.address
    }

    fn start(&self, handler: Arc<dyn MessageHandler>) -> Result<(), SendError> {
        self.network
            .state
            .lock()
            .handlers
            .insert(self.address.clone(), handler);
        Ok(())
    }

    fn send(&self, address: &str, batch: MessageBatch) -> Result<(), SendError> {
        self.network
            .route(&self.address, address, Packet::Batch(batch))
            .map(|_| ())
    }

    fn send_snapshot_chunk(&self, address: &str, chunk: SnapshotChunk) -> Result<(), SendError> {
        match self
            .network
            .route(&self.address, address, Packet::Chunk(chunk))?
        {
            true => Ok(()),
            false => Err(SendError::Unreachable(address.to_string())),
        }
    }

    fn close(&self) {
        self.network.unregister(&self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longship_raft::{ReplicaId, ShardId};

    #[derive(Default)]
    struct Sink {
        batches: Mutex<Vec<MessageBatch>>,
    }

    impl MessageHandler for Sink {
        fn handle_batch(&self, batch: MessageBatch) {
            self.batches.lock().push(batch);
        }
        fn handle_snapshot_chunk(&self, _: SnapshotChunk) -> bool {
            true
        }
        fn handle_unreachable(&self, _: &str, _: &[(ShardId, ReplicaId)]) {}
    }

    #[test]
    fn direct_and_queued_delivery_and_cuts() {
        let net = MemNetwork::new();
        let a = net.transport("a");
        let b = net.transport("b");
        let sink = Arc::new(Sink::default());
        b.start(sink.clone()).unwrap();
        a.send("b", MessageBatch::default()).unwrap();
        assert_eq!(sink.batches.lock().len(), 1);
        assert!(matches!(
            a.send("c", MessageBatch::default()),
            Err(SendError::Unreachable(_))
        ));
        net.cut("a", "b");
        assert!(a.send("b", MessageBatch::default()).is_err());

        let q = MemNetwork::queued(1);
        let a = q.transport("a");
        let b = q.transport("b");
        let sink = Arc::new(Sink::default());
        b.start(sink.clone()).unwrap();
        a.send("b", MessageBatch::default()).unwrap();
        assert!(matches!(
            a.send("b", MessageBatch::default()),
            Err(SendError::QueueFull(_))
        ));
        assert_eq!(sink.batches.lock().len(), 0);
        assert_eq!(q.deliver_all(), 1);
        assert_eq!(sink.batches.lock().len(), 1);
    }
}
