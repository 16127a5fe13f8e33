//! A seeded fault layer over the queued in-memory network: drops,
//! duplicates, delays and reorders packets, and cuts links (symmetric and
//! one-way partitions).

use std::collections::BTreeSet;

use longship_raft::Rng;
use longship_transport::{InFlight, MemNetwork, Packet};

use crate::kv::Fnv;

/// Per-packet fault probabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NetFaults {
    /// A packet is lost.
    pub drop: f64,
    /// A packet arrives twice.
    pub duplicate: f64,
    /// A packet is held back for up to `delay_rounds_max` rounds.
    pub delay: f64,
    /// Most rounds a delayed packet is held.
    pub delay_rounds_max: u64,
    /// The packets due in a round arrive in a random order.
    pub reorder: f64,
}

/// Bound on packets the network holds (the queued network drops beyond).
pub const IN_FLIGHT_MAX: usize = 100_000;

/// The simulated network.
pub struct SimNet {
    net: MemNetwork,
    /// Packets held back: (due round, sequence number, packet).
    held: Vec<(u64, u64, InFlight)>,
    seq: u64,
    /// Links cut now, (from, to).
    cut: BTreeSet<(String, String)>,
    /// Faults in force.
    pub faults: NetFaults,
    /// Packets delivered so far.
    pub delivered: u64,
}

impl SimNet {
    /// A network with no faults.
    pub fn new() -> SimNet {
        SimNet {
            net: MemNetwork::queued(IN_FLIGHT_MAX),
            held: Vec::new(),
            seq: 0,
            cut: BTreeSet::new(),
            faults: NetFaults::default(),
            delivered: 0,
        }
    }

    /// The underlying network (to create transports on).
    pub fn network(&self) -> &MemNetwork {
        &self.net
    }

    /// Cuts the link from `from` to `to`.
    pub fn cut(&mut self, from: &str, to: &str) {
        self.cut.insert((from.to_string(), to.to_string()));
        self.net.cut(from, to);
    }

    /// Restores the link from `from` to `to`.
    pub fn restore(&mut self, from: &str, to: &str) {
        if self.cut.remove(&(from.to_string(), to.to_string())) {
            self.net.heal();
            for (a, b) in &self.cut {
                self.net.cut(a, b);
            }
        }
    }

    /// The links cut now.
    pub fn cut_links(&self) -> &BTreeSet<(String, String)> {
        &self.cut
    }

    /// Restores every link and stops injecting faults; packets held back
    /// stay due when they were.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.net.heal();
        self.faults = NetFaults::default();
    }

    /// Takes what hosts sent, applies the faults, and delivers every packet
    /// due by `round`. Delivery runs the receivers' handlers, which only
    /// queue work. Returns how many packets were delivered.
    pub fn pump(&mut self, round: u64, rng: &mut Rng, trace: &mut Fnv) -> usize {
        let f = self.faults;
        for p in self.net.take_in_flight() {
            if f.drop > 0.0 && rng.chance(f.drop) {
                continue;
            }
            let copies = if f.duplicate > 0.0 && rng.chance(f.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = if f.delay > 0.0 && f.delay_rounds_max > 0 && rng.chance(f.delay) {
                    1 + rng.below(f.delay_rounds_max)
                } else {
                    0
                };
                self.seq += 1;
                self.held.push((round + delay, self.seq, p.clone()));
            }
        }
        let (mut due, later): (Vec<_>, Vec<_>) =
            self.held.drain(..).partition(|(at, _, _)| *at <= round);
        self.held = later;
        due.sort_by_key(|(at, seq, _)| (*at, *seq));
        if f.reorder > 0.0 && rng.chance(f.reorder) {
            // Fisher-Yates with the seeded generator.
            for i in (1..due.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                due.swap(i, j);
            }
        }
        let mut n = 0;
        let log = std::env::var_os("LONGSHIP_SIM_NETLOG").is_some();
        for (_, seq, p) in due {
            if log {
                match &p.packet {
                    Packet::Chunk(c) => eprintln!(
                        "[round {round}] chunk {}->{} shard {} {}->{} index {} #{} last {} bytes {}",
                        p.from,
                        p.to,
                        c.shard_id,
                        c.from,
                        c.to,
                        c.index,
                        c.chunk_id,
                        c.last,
                        c.data.len()
                    ),
                    Packet::Batch(b) => {
                        for m in &b.messages {
                            eprintln!(
                                "[round {round}] {}->{} {:?} shard {} {}->{} term {} idx {} commit {} n {} rej {} snap {:?}",
                                p.from,
                                p.to,
                                m.msg_type,
                                m.shard_id,
                                m.from,
                                m.to,
                                m.term,
                                m.log_index,
                                m.commit,
                                m.entries.len(),
                                m.reject,
                                m.snapshot.as_ref().map(|s| s.index)
                            );
                        }
                    }
                }
            }
            trace.write(p.from.as_bytes());
            trace.write(p.to.as_bytes());
            trace.write_u64(seq);
            trace.write_u64(packet_size(&p.packet));
            if self.net.deliver(p) {
                n += 1;
            }
        }
        self.delivered += n as u64;
        n
    }

    /// Packets held back or not yet taken.
    pub fn pending(&self) -> usize {
        self.held.len()
    }
}

impl Default for SimNet {
    fn default() -> Self {
        SimNet::new()
    }
}

/// A cheap fingerprint of a packet for the trace.
fn packet_size(p: &Packet) -> u64 {
    match p {
        Packet::Batch(b) => {
            let mut h = 0u64;
            for m in &b.messages {
                h = h
                    .wrapping_mul(31)
                    .wrapping_add(m.msg_type as u64)
                    .wrapping_add(m.term.0 << 8)
                    .wrapping_add(m.log_index.0 << 24)
                    .wrapping_add(m.entries.len() as u64);
            }
            h
        }
        Packet::Chunk(c) => c.chunk_id ^ (c.data.len() as u64) << 16,
    }
}
