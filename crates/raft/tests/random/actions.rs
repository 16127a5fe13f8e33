//! The random actions one step of the harness picks from.

use longship_raft::testkit::{Cluster, TEST_SHARD, format_message};
use longship_raft::{
    ConfigChange, ConfigChangeType, Entry, Index, LogReader, Membership, Message, MessageType,
    ReplicaId,
};

use super::{MEMBERS_MAX, Marks, Sim};

impl Sim {
    /// Takes one random action.
    pub(super) fn random_action(&mut self) {
        let roll = self.rng.below(1000);
        match roll {
            0..80 => self.act_tick(),
            80..130 => self.act_process(),
            130..270 => self.act_process_all(),
            270..420 => self.act_deliver_one(),
            420..520 => self.act_deliver_burst(),
            520..640 => self.act_deliver_all(),
            640..660 => self.act_drop(),
            660..680 => self.act_duplicate(),
            680..700 => self.act_partition(),
            700..710 => self.act_restart(),
            710..820 => self.act_propose(),
            820..840 => self.act_campaign(),
            840..870 => self.act_config_change(),
            870..885 => self.act_transfer(),
            885..930 => self.act_read_index(),
            930..960 => self.act_compact(),
            960..990 => self.act_report(),
            _ => self.act_unreachable(),
        }
    }

    fn act_tick(&mut self) {
        let ids = self.steppable();
        let all = self.rng.chance(0.7);
        let mut ticked = Vec::new();
        for id in ids {
            if all || self.rng.chance(0.5) {
                self.c.nodes.get_mut(&id).expect("live").raft.tick();
                ticked.push(id.0);
            }
        }
        self.note(|| format!("step: tick {ticked:?}"));
    }

    fn act_process(&mut self) {
        let mut cands: Vec<ReplicaId> = self.pending.keys().copied().collect();
        cands.extend(
            self.steppable()
                .into_iter()
                .filter(|id| self.c.nodes[id].raft.has_update()),
        );
        let Some(id) = self.pick(&cands) else {
            self.note(|| "step: process (nothing)".to_string());
            return;
        };
        let another =
            self.async_writes && self.c.nodes[&id].raft.has_update() && self.rng.chance(0.5);
        if self.pending.contains_key(&id) && !another {
            self.note(|| format!("step: finish delayed persistence of {}", id.0));
            self.finish(id);
            return;
        }
        let roll = self.rng.below(20);
        // Asynchronous writes stay in flight more often, so that updates
        // overlap.
        let delay = roll < 5 || (self.async_writes && (6..12).contains(&roll));
        let crash = roll == 5;
        self.note(|| format!("step: process {} delay={delay} crash={crash}", id.0));
        if !self.begin(id) {
            return;
        }
        if crash {
            // A crash while the write is in flight: the messages that
            // could leave early are out, the write is lost.
            self.restart(id);
        } else if !delay {
            self.finish(id);
        }
    }

    /// Runs every live node's update cycle, delaying some persistence.
    fn act_process_all(&mut self) {
        self.note(|| "step: process all".to_string());
        let finish_chance = if self.async_writes { 0.5 } else { 0.8 };
        for id in self.pending.keys().copied().collect::<Vec<_>>() {
            if self.rng.chance(finish_chance) {
                self.finish(id);
            }
        }
        for id in self.steppable() {
            if !self.begin(id) {
                continue;
            }
            let keep = if self.async_writes { 30 } else { 10 };
            let x = self.rng.below(100);
            if x < keep {
                // The write stays in flight.
            } else if x < keep + 2 {
                self.note(|| format!("  crash of {} during its write", id.0));
                self.restart(id);
            } else {
                self.finish(id);
            }
        }
    }

    /// Delivers every deliverable message queued now, in order, losing a few.
    fn act_deliver_all(&mut self) {
        self.note(|| "step: deliver all".to_string());
        let msgs: Vec<Message> = self.c.queue.drain(..).collect();
        for m in msgs {
            if self.blocked(m.to) {
                self.c.queue.push_back(m);
            } else if self.rng.chance(0.05) {
                self.note(|| format!("  lost {}", format_message(&m)));
                if m.msg_type == MessageType::InstallSnapshot {
                    self.report_snapshot(&m, false);
                }
            } else {
                self.deliver(m, 0.1);
            }
        }
    }

    /// Indexes of queued messages that may be delivered now.
    fn deliverable(&self) -> Vec<usize> {
        self.c
            .queue
            .iter()
            .enumerate()
            .filter(|(_, m)| !self.blocked(m.to))
            .map(|(i, _)| i)
            .collect()
    }

    fn act_deliver_one(&mut self) {
        let d = self.deliverable();
        let Some(i) = self.pick(&d) else {
            self.note(|| "step: deliver (nothing)".to_string());
            return;
        };
        let m = self.c.queue.remove(i).expect("index in queue");
        self.note(|| format!("step: deliver #{i}"));
        self.deliver(m, 0.2);
    }

    fn act_deliver_burst(&mut self) {
        let n = 1 + self.rng.below(8) as usize;
        self.note(|| format!("step: deliver burst of {n}"));
        for _ in 0..n {
            let Some(&i) = self.deliverable().first() else {
                return;
            };
            let m = self.c.queue.remove(i).expect("index in queue");
            self.deliver(m, 0.1);
        }
    }

    fn act_drop(&mut self) {
        let n = self.c.queue.len() as u64;
        if n == 0 {
            return;
        }
        let i = self.rng.below(n) as usize;
        let m = self.c.queue.remove(i).expect("index in queue");
        self.note(|| format!("step: drop {}", format_message(&m)));
        if m.msg_type == MessageType::InstallSnapshot {
            self.report_snapshot(&m, false);
        }
    }

    fn act_duplicate(&mut self) {
        let n = self.c.queue.len() as u64;
        if n == 0 {
            return;
        }
        let i = self.rng.below(n) as usize;
        let m = self.c.queue[i].clone();
        let at = self.rng.below(n + 1) as usize;
        self.note(|| format!("step: duplicate {} to #{at}", format_message(&m)));
        self.c.queue.insert(at, m);
    }

    fn act_partition(&mut self) {
        let ids: Vec<ReplicaId> = self.live();
        let roll = self.rng.below(10);
        // One partition at a time: a new one replaces the old.
        self.c.heal();
        if roll < 6 {
            self.note(|| "step: heal".to_string());
            return;
        }
        match roll {
            6..8 => {
                let Some(id) = self.pick(&ids) else { return };
                self.note(|| format!("step: isolate {}", id.0));
                self.c.isolate(id.0);
            }
            8 => {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                for id in &ids {
                    if self.rng.chance(0.5) {
                        a.push(id.0);
                    } else {
                        b.push(id.0);
                    }
                }
                self.note(|| format!("step: partition {a:?} | {b:?}"));
                self.c.partition(&a, &b);
            }
            _ => {
                let (Some(x), Some(y)) = (self.pick(&ids), self.pick(&ids)) else {
                    return;
                };
                if x != y {
                    self.note(|| format!("step: cut {} -> {}", x.0, y.0));
                    self.c.cut.insert((x, y));
                }
            }
        }
    }

    fn act_restart(&mut self) {
        // Half the time, crash a node whose write is delayed: it loses it.
        let pending: Vec<ReplicaId> = self.pending.keys().copied().collect();
        let ids = if !pending.is_empty() && self.rng.chance(0.5) {
            pending
        } else {
            self.live()
        };
        let Some(id) = self.pick(&ids) else { return };
        self.restart(id);
    }

    /// Crash-restarts `id`: it keeps its durable state only.
    fn restart(&mut self, id: ReplicaId) {
        let lost = self.pending.remove(&id).is_some();
        self.stats.restarts += 1;
        self.stats.delayed_writes_lost += u64::from(lost);
        self.note(|| format!("step: crash-restart {} (lost delayed write: {lost})", id.0));
        let durable = self.c.nodes[&id].hard_state;
        self.c.restart(id);
        let n = &self.c.nodes[&id];
        let r = &n.raft;
        // Restart may lower volatile state, never durable state.
        if r.term() != durable.term || r.log().committed() < durable.commit {
            fail!(
                self,
                "node {} restarted with term {} commit {} but durable {:?}",
                id.0,
                r.term(),
                r.log().committed(),
                durable
            );
        }
        let m = Marks {
            term: r.term(),
            commit: r.log().committed(),
            applied: r.log().applied(),
            sm_applied: n.applied_index,
        };
        self.marks.insert(id, m);
    }

    fn payload(&mut self) -> Entry {
        self.next_payload += 1;
        // 16-byte entries, unique per seed.
        let s = format!("p{:07x}-{:07}", self.seed & 0xFFF_FFFF, self.next_payload);
        Cluster::entry(&s)
    }

    fn act_propose(&mut self) {
        let ids = self.steppable();
        let Some(id) = self.pick(&ids) else { return };
        let n = 1 + self.rng.below(4);
        let ents: Vec<Entry> = (0..n).map(|_| self.payload()).collect();
        let r = self.c.nodes.get_mut(&id).expect("live").raft.propose(ents);
        self.note(|| format!("step: propose {n} on {}: {r:?}", id.0));
    }

    fn act_config_change(&mut self) {
        let ids = self.steppable();
        let leader = ids
            .iter()
            .copied()
            .find(|id| self.c.nodes[id].raft.is_leader());
        let proposer = match leader {
            Some(l) if self.rng.chance(0.8) => l,
            _ => match self.pick(&ids) {
                Some(id) => id,
                None => return,
            },
        };
        let m: Membership = self.c.nodes[&proposer].raft.membership().clone();
        let members = m.all_members().count();
        let can_add = members < MEMBERS_MAX && self.next_id <= self.ids_max;
        let ordered = if self.rng.chance(0.7) {
            m.config_change_id
        } else {
            Index(0)
        };
        let roll = self.rng.below(6);
        let cc = match roll {
            0 if can_add => self.new_member(ConfigChangeType::AddReplica, ordered),
            1 if can_add => self.new_member(ConfigChangeType::AddNonVoting, ordered),
            2 if can_add && m.witnesses.len() < 2 => {
                self.new_member(ConfigChangeType::AddWitness, ordered)
            }
            3 if !m.non_votings.is_empty() => {
                let nv: Vec<ReplicaId> = m.non_votings.keys().copied().collect();
                let id = self.pick(&nv).expect("non-empty");
                ConfigChange {
                    change_type: ConfigChangeType::AddReplica,
                    replica_id: id,
                    address: String::new(),
                    config_change_id: ordered,
                }
            }
            _ => {
                // Removal, always ordered so it applies to the membership it
                // was checked against: never below 3 voters.
                let mut cands: Vec<ReplicaId> = m
                    .non_votings
                    .keys()
                    .chain(m.witnesses.keys())
                    .copied()
                    .collect();
                if m.voters.len() > 3 {
                    cands.extend(m.voters.keys().copied());
                }
                let Some(id) = self.pick(&cands) else {
                    self.note(|| "step: config change (nothing to do)".to_string());
                    return;
                };
                ConfigChange {
                    change_type: ConfigChangeType::RemoveReplica,
                    replica_id: id,
                    address: String::new(),
                    config_change_id: m.config_change_id,
                }
            }
        };
        let r = self
            .c
            .nodes
            .get_mut(&proposer)
            .expect("live")
            .raft
            .propose_config_change(&cc);
        let new_id = cc.replica_id.0 == self.next_id;
        if new_id && r.is_ok() {
            self.next_id += 1;
            self.c.add_node(cc.replica_id, Membership::default());
        }
        self.note(|| {
            format!(
                "step: config change on {}: {:?} {} based on {}: {r:?}",
                proposer.0, cc.change_type, cc.replica_id.0, cc.config_change_id.0
            )
        });
    }

    /// A change adding a new replica, which starts (once the change was
    /// proposed) with an empty log and no membership: it learns both from
    /// the leader.
    fn new_member(&mut self, change_type: ConfigChangeType, based_on: Index) -> ConfigChange {
        let id = ReplicaId(self.next_id);
        ConfigChange {
            change_type,
            replica_id: id,
            address: format!("node{}", id.0),
            config_change_id: based_on,
        }
    }

    /// A node's election timeout fires now (elections overlap more often
    /// than ticking alone makes them).
    fn act_campaign(&mut self) {
        let ids = self.steppable();
        let Some(id) = self.pick(&ids) else { return };
        self.note(|| format!("step: campaign {}", id.0));
        self.c.nodes.get_mut(&id).expect("live").raft.campaign();
    }

    fn act_transfer(&mut self) {
        let ids = self.steppable();
        let Some(id) = self.pick(&ids) else { return };
        let voters: Vec<ReplicaId> = self.c.nodes[&id]
            .raft
            .membership()
            .voters
            .keys()
            .copied()
            .collect();
        let Some(target) = self.pick(&voters) else {
            return;
        };
        let r = self
            .c
            .nodes
            .get_mut(&id)
            .expect("live")
            .raft
            .transfer_leader(target);
        self.note(|| {
            format!(
                "step: transfer leadership via {} to {}: {r:?}",
                id.0, target.0
            )
        });
    }

    fn act_read_index(&mut self) {
        let ids = self.steppable();
        let Some(id) = self.pick(&ids) else { return };
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        let floor = self.max_commit_now();
        self.reads.insert(ctx, floor);
        let r = self
            .c
            .nodes
            .get_mut(&id)
            .expect("live")
            .raft
            .read_index(ctx);
        self.note(|| {
            format!(
                "step: read index ctx={ctx} on {} (floor {}): {r:?}",
                id.0, floor.0
            )
        });
    }

    fn act_compact(&mut self) {
        let ids = self.steppable();
        let Some(id) = self.pick(&ids) else { return };
        let n = &self.c.nodes[&id];
        // Above the durable snapshot and any snapshot received in memory.
        let snap = n
            .raft
            .log()
            .reader()
            .snapshot()
            .index
            .max(n.raft.log().first_index().prev());
        let applied = n.applied_index;
        if applied <= snap {
            return;
        }
        let index = Index(snap.0 + 1 + self.rng.below(applied.0 - snap.0));
        self.note(|| format!("step: compact {} at {}", id.0, index.0));
        self.c.compact(id, index);
    }

    fn act_report(&mut self) {
        let n = self.reports.len() as u64;
        if n == 0 {
            return;
        }
        let i = self.rng.below(n) as usize;
        self.note(|| "step: snapshot status".to_string());
        self.deliver_report(i);
    }

    fn act_unreachable(&mut self) {
        let ids = self.steppable();
        let Some(leader) = ids
            .iter()
            .copied()
            .find(|id| self.c.nodes[id].raft.is_leader())
        else {
            return;
        };
        let Some(to) = self.pick(&ids) else { return };
        if to == leader {
            return;
        }
        self.note(|| format!("step: {} unreachable from {}", to.0, leader.0));
        let m = Message::new(MessageType::Unreachable, TEST_SHARD, to, leader);
        self.c.nodes.get_mut(&leader).expect("live").raft.step(m);
    }
}
