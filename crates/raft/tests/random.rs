//! Randomized multi-replica harness (DESIGN §4): 3- and 5-replica clusters of
//! protocol cores driven by one seeded [`Rng`] through random faults —
//! ticks, delayed persistence, message reorder/drop/duplication, symmetric
//! and one-way partitions, crash-restarts, proposals, membership changes,
//! leadership transfers, read-index requests and compaction with snapshot
//! transfer — checking the Raft safety properties after every step, then
//! healing everything and requiring convergence.
//!
//! No clock, no threads, no other randomness, only ordered containers: a
//! seed replays exactly. Environment:
//! - `RAFT_SEED=N` runs only seed `N`, printing a trace of every step;
//! - `RAFT_SEEDS=N` (and `RAFT_SEED_START=S`) runs seeds `S..S+N` instead of
//!   the default set (soak runs; use `cargo test --release`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::Bytes;
use longship_raft::testkit::{Cluster, ClusterOptions, format_message, format_status};
use longship_raft::{
    ConfigChange, ConfigChangeType, Entry, EntryType, Index, LogError, LogReader, Membership,
    Message, MessageType, ReplicaId, Rng, Role, Term, Update,
};

/// Seeds the default run covers (split over the `random_seeds_*` tests).
const DEFAULT_SEEDS: u64 = 512;
/// Test functions the default seeds are split over (parallel test threads).
const SHARDS: u64 = 4;
/// Steps of random faults per seed.
const FAULT_STEPS: usize = 600;
/// Tick rounds allowed for convergence after healing.
const CONVERGE_ROUNDS: usize = 400;
/// Most process/deliver passes in one flush of the convergence phase.
const FLUSH_PASSES: usize = 200;
/// Most replica ids ever created beyond the initial members.
const EXTRA_IDS_MAX: u64 = 4;
/// Most members (of any kind) a membership may hold.
const MEMBERS_MAX: usize = 7;

/// What a seed runs with; everything derives from the seed.
#[derive(Debug)]
struct Params {
    replicas: u64,
    options: ClusterOptions,
}

impl Params {
    fn from_seed(seed: u64) -> Params {
        let mut rng = Rng::new(seed ^ 0x5EED_0F7A_4A33);
        let replicas = if seed.is_multiple_of(2) { 3 } else { 5 };
        let check_quorum = rng.chance(0.5);
        let heartbeat_rtt = 1 + rng.below(2);
        let election_rtt = 2 * heartbeat_rtt + 1 + rng.below(4);
        let options = ClusterOptions {
            pre_vote: rng.chance(0.5),
            check_quorum,
            // Lease reads assume bounded clock drift, which random ticking
            // does not give; they are left to scripted tests.
            lease_read: false,
            election_rtt,
            heartbeat_rtt,
            max_append_bytes: if rng.chance(0.3) { 200 } else { 1 << 20 },
            max_inflight_msgs: if rng.chance(0.3) {
                1 + rng.below(3) as usize
            } else {
                256
            },
            max_uncommitted_bytes: if rng.chance(0.2) { 256 } else { 0 },
            seed,
        };
        Params { replicas, options }
    }
}

/// Per-node marks for the monotonicity checks.
#[derive(Clone, Copy, Debug)]
struct Marks {
    term: Term,
    commit: Index,
    applied: Index,
    sm_applied: Index,
}

/// What the log-matching check remembers of an entry seen at (index, term).
struct Seen {
    prev_term: Term,
    entry_type: EntryType,
    cmd: Bytes,
}

/// An index first seen committed: the entry's term and the term of the
/// replica that first knew it committed (an upper bound of the term in which
/// it was committed).
#[derive(Clone, Copy)]
struct CommitRec {
    term: Option<Term>,
    known_in: Term,
}

/// What a run exercised (to tune the action mix; printed by soak runs).
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    seeds: u64,
    committed: u64,
    leader_terms: u64,
    snapshots_delivered: u64,
    restarts: u64,
    delayed_writes_lost: u64,
    config_changes_applied: u64,
    reads_ready: u64,
    transfers: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.committed += o.committed;
        self.leader_terms += o.leader_terms;
        self.snapshots_delivered += o.snapshots_delivered;
        self.restarts += o.restarts;
        self.delayed_writes_lost += o.delayed_writes_lost;
        self.config_changes_applied += o.config_changes_applied;
        self.reads_ready += o.reads_ready;
        self.transfers += o.transfers;
    }
}

struct Sim {
    stats: Stats,
    seed: u64,
    rng: Rng,
    c: Cluster,
    trace: bool,
    step: usize,
    /// Updates taken whose persistence is delayed.
    pending: BTreeMap<ReplicaId, Update>,
    /// Snapshot status reports not yet given to the leader.
    reports: VecDeque<Message>,
    /// Removed replicas: never stepped again.
    stopped: BTreeSet<ReplicaId>,
    next_id: u64,
    ids_max: u64,
    next_ctx: u64,
    next_payload: u64,
    // ----- checker state -----
    /// Election safety: the leader of each term ever seen.
    leaders: BTreeMap<Term, ReplicaId>,
    /// Every index ever known committed (a growing prefix).
    commits: BTreeMap<Index, CommitRec>,
    max_commit: Index,
    /// Per node: commit range already checked against `commits`.
    commit_checked: BTreeMap<ReplicaId, Index>,
    /// Per (leader, term): committed prefix already checked for completeness.
    leader_checked: BTreeMap<(ReplicaId, Term), Index>,
    marks: BTreeMap<ReplicaId, Marks>,
    /// Log matching: every (index, term) seen in any log.
    seen: BTreeMap<(Index, Term), Seen>,
    /// Per node: a fingerprint of the log last checked for log matching.
    seen_fingerprint: BTreeMap<ReplicaId, (Index, Index, Term, Index)>,
    /// Read index safety: the highest commit index known anywhere when the
    /// read with this context was requested.
    reads: BTreeMap<u64, Index>,
    reads_checked: BTreeMap<ReplicaId, usize>,
    out: String,
}

macro_rules! fail {
    ($sim:expr, $($arg:tt)*) => {
        panic!("seed {} step {}: {}", $sim.seed, $sim.step, format!($($arg)*))
    };
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Sim {
        let p = Params::from_seed(seed);
        let voters: Vec<u64> = (1..=p.replicas).collect();
        if trace {
            println!("seed {seed}: {} replicas, {:?}", p.replicas, p.options);
        }
        let c = Cluster::new(&voters, p.options);
        let mut sim = Sim {
            stats: Stats {
                seeds: 1,
                ..Stats::default()
            },
            seed,
            rng: Rng::new(seed),
            c,
            trace,
            step: 0,
            pending: BTreeMap::new(),
            reports: VecDeque::new(),
            stopped: BTreeSet::new(),
            next_id: p.replicas + 1,
            ids_max: p.replicas + EXTRA_IDS_MAX,
            next_ctx: 1,
            next_payload: 0,
            leaders: BTreeMap::new(),
            commits: BTreeMap::new(),
            max_commit: Index(0),
            commit_checked: BTreeMap::new(),
            leader_checked: BTreeMap::new(),
            marks: BTreeMap::new(),
            seen: BTreeMap::new(),
            seen_fingerprint: BTreeMap::new(),
            reads: BTreeMap::new(),
            reads_checked: BTreeMap::new(),
            out: String::new(),
        };
        sim.check();
        sim
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.trace {
            let s = what();
            let _ = writeln!(self.out, "{s}");
        }
    }

    /// One line per step in traces: role, term, commit, applied per node.
    fn note_roles(&mut self) {
        if !self.trace {
            return;
        }
        let mut line = String::from("  =");
        for (id, n) in &self.c.nodes {
            let r = &n.raft;
            let role = match r.role() {
                Role::Leader => 'L',
                Role::Candidate => 'C',
                Role::PreCandidate => 'P',
                Role::Follower => 'F',
            };
            let stop = if self.stopped.contains(id) { "x" } else { "" };
            let _ = write!(
                line,
                " {}{stop}:{role}{}/c{}/a{}",
                id.0,
                r.term().0,
                r.log().committed().0,
                n.applied_index.0
            );
        }
        let _ = writeln!(self.out, "{line} q={}", self.c.queue.len());
    }

    fn flush_trace(&mut self) {
        if self.trace && !self.out.is_empty() {
            print!("{}", self.out);
            self.out.clear();
        }
    }

    fn live(&self) -> Vec<ReplicaId> {
        self.c
            .nodes
            .keys()
            .copied()
            .filter(|id| !self.stopped.contains(id))
            .collect()
    }

    /// Live nodes that may be stepped now (no delayed persistence).
    fn steppable(&self) -> Vec<ReplicaId> {
        self.live()
            .into_iter()
            .filter(|id| !self.pending.contains_key(id))
            .collect()
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            Some(v[self.rng.below(v.len() as u64) as usize])
        }
    }

    fn max_commit_now(&self) -> Index {
        self.c
            .nodes
            .values()
            .map(|n| n.raft.log().committed())
            .max()
            .unwrap_or(Index(0))
    }

    // ----- the update cycle -----

    fn begin(&mut self, id: ReplicaId) -> bool {
        let mut out = std::mem::take(&mut self.out);
        let r = self.c.process_begin(id, self.trace.then_some(&mut out));
        self.out = out;
        let Some((u, dropped)) = r else { return false };
        self.on_dropped(dropped);
        self.pending.insert(id, u);
        true
    }

    fn finish(&mut self, id: ReplicaId) {
        let Some(u) = self.pending.remove(&id) else {
            return;
        };
        let mut out = std::mem::take(&mut self.out);
        let dropped = self
            .c
            .process_finish(id, &u, self.trace.then_some(&mut out));
        self.out = out;
        self.on_dropped(dropped);
    }

    /// A snapshot that could not be sent is reported failed by the transport.
    fn on_dropped(&mut self, dropped: Vec<Message>) {
        for m in dropped {
            if m.msg_type == MessageType::InstallSnapshot {
                self.report_snapshot(&m, false);
            }
        }
    }

    fn report_snapshot(&mut self, m: &Message, ok: bool) {
        let mut r = Message::new(MessageType::SnapshotStatus, m.shard_id, m.to, m.from);
        r.reject = !ok;
        self.reports.push_back(r);
    }

    /// Delivers `m` (already taken off the queue).
    fn deliver(&mut self, m: Message, snapshot_fail_chance: f64) {
        if self.stopped.contains(&m.to) || !self.c.nodes.contains_key(&m.to) {
            return;
        }
        if self.c.cut.contains(&(m.from, m.to)) {
            self.note(|| format!("  cut {}", format_message(&m)));
            if m.msg_type == MessageType::InstallSnapshot {
                self.report_snapshot(&m, false);
            }
            return;
        }
        if m.msg_type == MessageType::InstallSnapshot {
            if self.rng.chance(snapshot_fail_chance) {
                self.note(|| format!("  snapshot transfer fails {}", format_message(&m)));
                self.report_snapshot(&m, false);
                return;
            }
            // The status may also be lost or wrong: failed after delivery.
            let ok = !self.rng.chance(snapshot_fail_chance / 2.0);
            self.report_snapshot(&m, ok);
        }
        self.note(|| format!("  deliver {}", format_message(&m)));
        match m.msg_type {
            MessageType::InstallSnapshot => self.stats.snapshots_delivered += 1,
            MessageType::TimeoutNow => self.stats.transfers += 1,
            _ => {}
        }
        let to = m.to;
        self.c.nodes.get_mut(&to).expect("checked").raft.step(m);
    }

    fn deliver_report(&mut self, i: usize) {
        let Some(r) = self.reports.remove(i) else {
            return;
        };
        if self.stopped.contains(&r.to) {
            return;
        }
        if self.pending.contains_key(&r.to) {
            self.reports.push_back(r);
            return;
        }
        self.note(|| format!("  report {} reject={}", format_message(&r), r.reject));
        if let Some(n) = self.c.nodes.get_mut(&r.to) {
            n.raft.step(r);
        }
    }

    // ----- random actions -----

    fn run(&mut self) {
        for step in 1..=FAULT_STEPS {
            self.step = step;
            self.note(|| format!("#{step}"));
            self.random_action();
            self.check();
            self.note_roles();
            self.flush_trace();
        }
        self.converge();
        self.flush_trace();
        self.stats.committed = self.max_commit.0;
        self.stats.leader_terms = self.leaders.len() as u64;
        self.stats.config_changes_applied = self
            .c
            .nodes
            .values()
            .map(|n| {
                let ok: BTreeSet<Index> = n
                    .config_results
                    .iter()
                    .filter(|(_, ok)| *ok)
                    .map(|(i, _)| *i)
                    .collect();
                ok.len() as u64
            })
            .max()
            .unwrap_or(0)
            .saturating_sub(Params::from_seed(self.seed).replicas);
    }

    fn random_action(&mut self) {
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
        if self.pending.contains_key(&id) {
            self.note(|| format!("step: finish delayed persistence of {}", id.0));
            self.finish(id);
            return;
        }
        let roll = self.rng.below(20);
        let (delay, crash) = (roll < 5, roll == 5);
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
        for id in self.pending.keys().copied().collect::<Vec<_>>() {
            if self.rng.chance(0.8) {
                self.finish(id);
            }
        }
        for id in self.steppable() {
            if !self.begin(id) {
                continue;
            }
            match self.rng.below(100) {
                0..10 => {}
                10..12 => {
                    self.note(|| format!("  crash of {} during its write", id.0));
                    self.restart(id);
                }
                _ => self.finish(id),
            }
        }
    }

    /// Delivers every deliverable message queued now, in order, losing a few.
    fn act_deliver_all(&mut self) {
        self.note(|| "step: deliver all".to_string());
        let msgs: Vec<Message> = self.c.queue.drain(..).collect();
        for m in msgs {
            if self.pending.contains_key(&m.to) {
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
            .filter(|(_, m)| !self.pending.contains_key(&m.to))
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
        let m = Message::new(
            MessageType::Unreachable,
            longship_raft::testkit::TEST_SHARD,
            to,
            leader,
        );
        self.c.nodes.get_mut(&leader).expect("live").raft.step(m);
    }

    // ----- convergence -----

    /// Processes and delivers everything until quiet (bounded), with no
    /// faults: snapshots succeed.
    fn flush(&mut self) {
        for _ in 0..FLUSH_PASSES {
            let mut moved = false;
            for id in self.live() {
                if self.begin(id) {
                    self.finish(id);
                    moved = true;
                }
            }
            while let Some(m) = self.c.queue.pop_front() {
                moved = true;
                self.deliver(m, 0.0);
            }
            while !self.reports.is_empty() {
                moved = true;
                self.deliver_report(0);
            }
            self.update_stopped();
            if !moved {
                return;
            }
        }
    }

    fn converge(&mut self) {
        self.step = FAULT_STEPS + 1;
        self.note(|| "== heal and converge".to_string());
        self.c.heal();
        for id in self.pending.keys().copied().collect::<Vec<_>>() {
            self.finish(id);
        }
        let mut final_index: Option<(ReplicaId, Term, Index)> = None;
        for round in 0..CONVERGE_ROUNDS {
            self.step = FAULT_STEPS + 1 + round;
            for id in self.live() {
                self.c.nodes.get_mut(&id).expect("live").raft.tick();
            }
            self.flush();
            self.check();
            self.flush_trace();
            let Some(leader) = self.stable_leader() else {
                continue;
            };
            let lr = &self.c.nodes[&leader].raft;
            let (term, last) = (lr.term(), lr.log().last_index());
            match final_index {
                Some((l, t, idx)) if l == leader && t == term => {
                    if self.all_applied(leader, idx) {
                        self.check_final(idx);
                        if self.trace {
                            for n in self.c.nodes.values() {
                                println!("{}", format_status(&n.raft));
                            }
                        }
                        return;
                    }
                }
                _ => {
                    // Wait for the cluster to settle, then propose once per leader term.
                    if !self.all_applied(leader, last) {
                        continue;
                    }
                    let e = Cluster::entry("final");
                    let r = self
                        .c
                        .nodes
                        .get_mut(&leader)
                        .expect("live")
                        .raft
                        .propose(vec![e]);
                    if r.is_ok() {
                        let idx = self.c.nodes[&leader].raft.log().last_index();
                        self.note(|| format!("final proposal on {} at {}", leader.0, idx.0));
                        final_index = Some((leader, term, idx));
                    }
                }
            }
        }
        let states: Vec<String> = self
            .c
            .nodes
            .values()
            .map(|n| {
                let mut s = format_status(&n.raft);
                if n.raft.is_leader() {
                    for (id, pr) in n.raft.progress() {
                        let _ = write!(s, "\n    {}: {pr:?}", id.0);
                    }
                }
                s
            })
            .collect();
        fail!(
            self,
            "no convergence within {CONVERGE_ROUNDS} rounds:\n{}",
            states.join("\n")
        );
    }

    /// The unique leader of the highest term among live nodes, if every live
    /// member of its membership follows it.
    fn stable_leader(&self) -> Option<ReplicaId> {
        let live = self.live();
        let leaders: Vec<ReplicaId> = live
            .iter()
            .copied()
            .filter(|id| self.c.nodes[id].raft.is_leader())
            .collect();
        let [leader] = leaders[..] else { return None };
        let lr = &self.c.nodes[&leader].raft;
        let all_follow = lr
            .membership()
            .all_members()
            .filter(|id| !self.stopped.contains(id))
            .all(|id| {
                let r = &self.c.nodes[&id].raft;
                r.leader_id() == leader && r.term() == lr.term()
            });
        all_follow.then_some(leader)
    }

    fn all_applied(&self, leader: ReplicaId, index: Index) -> bool {
        let lr = &self.c.nodes[&leader].raft;
        lr.membership()
            .all_members()
            .filter(|id| !self.stopped.contains(id))
            .all(|id| self.c.nodes[&id].applied_index >= index)
    }

    fn check_final(&self, index: Index) {
        let e = self
            .c
            .committed
            .get(&index)
            .unwrap_or_else(|| fail!(self, "final entry {} not committed", index.0));
        if &e.cmd[..] != b"final" {
            fail!(self, "final proposal not at {}: {e:?}", index.0);
        }
    }

    // ----- checks -----

    fn update_stopped(&mut self) {
        let removed: Vec<ReplicaId> = self
            .c
            .nodes
            .values()
            .flat_map(|n| n.raft.membership().removed.iter().copied())
            .filter(|id| !self.stopped.contains(id))
            .collect();
        for id in removed {
            self.note(|| format!("  node {} removed: stopped", id.0));
            self.pending.remove(&id);
            self.stopped.insert(id);
        }
    }

    fn check(&mut self) {
        self.update_stopped();
        let ids: Vec<ReplicaId> = self.c.nodes.keys().copied().collect();
        for &id in &ids {
            self.check_node(id);
        }
        self.record_commits();
        for &id in &ids {
            self.check_commit_consistency(id);
            self.check_log_matching(id);
            self.check_leader_completeness(id);
            self.check_reads(id);
        }
    }

    fn check_node(&mut self, id: ReplicaId) {
        let n = &self.c.nodes[&id];
        let r = &n.raft;
        let log = r.log();
        let now = Marks {
            term: r.term(),
            commit: log.committed(),
            applied: log.applied(),
            sm_applied: n.applied_index,
        };
        if !(now.applied <= now.commit && now.commit <= log.last_index()) {
            fail!(
                self,
                "node {}: applied {} commit {} last {}",
                id.0,
                now.applied.0,
                now.commit.0,
                log.last_index().0
            );
        }
        if let Some(prev) = self.marks.get(&id)
            && (now.term < prev.term
                || now.commit < prev.commit
                || now.applied < prev.applied
                || now.sm_applied < prev.sm_applied)
        {
            fail!(self, "node {} went backwards: {prev:?} -> {now:?}", id.0);
        }
        self.marks.insert(id, now);
        if r.is_leader() {
            let term = r.term();
            match self.leaders.get(&term) {
                Some(&l) if l != id => {
                    fail!(
                        self,
                        "election safety: {} and {} both lead term {}",
                        l.0,
                        id.0,
                        term.0
                    )
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                }
            }
        }
    }

    /// Records indexes newly known committed, with their terms.
    fn record_commits(&mut self) {
        let Some((_, n)) = self
            .c
            .nodes
            .iter()
            .max_by_key(|(_, n)| n.raft.log().committed())
        else {
            return;
        };
        let commit = n.raft.log().committed();
        if commit <= self.max_commit {
            return;
        }
        let known_in = n.raft.term();
        let mut i = self.max_commit.next();
        while i <= commit {
            let term = n.raft.log().term(i).ok();
            self.commits.insert(i, CommitRec { term, known_in });
            i = i.next();
        }
        self.max_commit = commit;
    }

    /// Every index a node knows committed holds the entry first known
    /// committed there (Raft §5.4.3, checked on the log rather than on apply).
    fn check_commit_consistency(&mut self, id: ReplicaId) {
        let r = &self.c.nodes[&id].raft;
        let commit = r.log().committed();
        let from = self.commit_checked.get(&id).copied().unwrap_or(Index(0));
        let mut i = from.next();
        while i <= commit {
            if let (Ok(t), Some(rec)) = (r.log().term(i), self.commits.get(&i))
                && rec.term.is_some_and(|rt| rt != t)
            {
                fail!(
                    self,
                    "node {} commits term {} at {} but term {:?} was committed there",
                    id.0,
                    t.0,
                    i.0,
                    rec.term
                );
            }
            i = i.next();
        }
        if commit > from {
            self.commit_checked.insert(id, commit);
        }
    }

    /// Log matching (Raft §5.3): an (index, term) pair determines the entry
    /// and the term before it, hence (by induction) the whole log up to it,
    /// over the entries both logs still hold.
    fn check_log_matching(&mut self, id: ReplicaId) {
        let r = &self.c.nodes[&id].raft;
        let log = r.log();
        let first = log.first_index();
        let last = log.last_index();
        let fp = (first, last, log.last_term(), log.stable_last_index());
        if self.seen_fingerprint.get(&id) == Some(&fp) {
            return;
        }
        let mut prev_term = log
            .term(first.prev())
            .unwrap_or_else(|e| fail!(self, "node {}: term before first index: {e}", id.0));
        let ents = if first <= last {
            log.entries(first, last.next(), u64::MAX)
                .unwrap_or_else(|e| fail!(self, "node {}: read log: {e}", id.0))
        } else {
            Vec::new()
        };
        for e in ents {
            let key = (e.index, e.term);
            match self.seen.get_mut(&key) {
                None => {
                    self.seen.insert(
                        key,
                        Seen {
                            prev_term,
                            entry_type: e.entry_type,
                            cmd: e.cmd.clone(),
                        },
                    );
                }
                Some(s) => {
                    if s.prev_term != prev_term {
                        fail!(
                            self,
                            "log matching: node {} has {}/{} after term {} but another log has it after term {}",
                            id.0,
                            e.term.0,
                            e.index.0,
                            prev_term.0,
                            s.prev_term.0
                        );
                    }
                    let meta = EntryType::Metadata;
                    if s.entry_type == meta && e.entry_type != meta {
                        s.entry_type = e.entry_type;
                        s.cmd = e.cmd.clone();
                    } else if e.entry_type != meta
                        && (s.entry_type != e.entry_type || s.cmd != e.cmd)
                    {
                        fail!(
                            self,
                            "log matching: node {} holds a different entry at {}/{}",
                            id.0,
                            e.term.0,
                            e.index.0
                        );
                    }
                }
            }
            prev_term = e.term;
        }
        self.seen_fingerprint.insert(id, fp);
    }

    /// Leader completeness (Raft §5.4.1): a leader holds every entry
    /// committed in an earlier term, as far as not compacted.
    fn check_leader_completeness(&mut self, id: ReplicaId) {
        let r = &self.c.nodes[&id].raft;
        if !r.is_leader() {
            return;
        }
        let term = r.term();
        let key = (id, term);
        let from = self.leader_checked.get(&key).copied().unwrap_or(Index(0));
        for (&i, rec) in self.commits.range(from.next()..) {
            let Some(t) = rec.term else { continue };
            if rec.known_in >= term {
                continue;
            }
            match r.log().term(i) {
                Ok(lt) if lt == t => {}
                Err(LogError::Compacted) => {}
                other => fail!(
                    self,
                    "leader completeness: leader {} of term {} has {other:?} at {} committed with term {} (known in term {})",
                    id.0,
                    term.0,
                    i.0,
                    t.0,
                    rec.known_in.0
                ),
            }
        }
        self.leader_checked.insert(key, self.max_commit);
    }

    /// Read index safety (thesis §6.4): a read's index covers every commit
    /// known anywhere when the read was requested.
    fn check_reads(&mut self, id: ReplicaId) {
        let n = &self.c.nodes[&id];
        let from = self.reads_checked.get(&id).copied().unwrap_or(0);
        for rs in &n.ready_reads[from.min(n.ready_reads.len())..] {
            self.stats.reads_ready += 1;
            let Some(&floor) = self.reads.get(&rs.context) else {
                fail!(
                    self,
                    "node {} got a read for unknown context {}",
                    id.0,
                    rs.context
                );
            };
            if rs.index < floor {
                fail!(
                    self,
                    "read index safety: node {} read ctx={} at {} but {} was committed when it was requested",
                    id.0,
                    rs.context,
                    rs.index.0,
                    floor.0
                );
            }
        }
        self.reads_checked.insert(id, n.ready_reads.len());
    }
}

/// Runs one seed; on failure panics with the seed and step.
fn run_seed(seed: u64, trace: bool) -> Stats {
    let mut sim = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        sim = Some(Sim::new(seed, trace));
        sim.as_mut().expect("just set").run();
    }));
    if let Err(e) = result {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let step = sim.as_ref().map_or(0, |s| s.step);
        if let Some(s) = sim.as_mut() {
            s.flush_trace();
        }
        panic!(
            "seed {seed} failed at step {step}: {msg}\nreplay: RAFT_SEED={seed} cargo test -p longship-raft --test random -- --nocapture"
        );
    }
    let stats = sim.expect("ran").stats;
    if trace {
        println!("{stats:?}");
    }
    stats
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// Runs this shard's part of the configured seeds.
fn run_shard(shard: u64) {
    if let Some(seed) = env_u64("RAFT_SEED") {
        if shard == 0 {
            run_seed(seed, true);
        }
        return;
    }
    let start = env_u64("RAFT_SEED_START").unwrap_or(0);
    let count = env_u64("RAFT_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let mut failures = Vec::new();
    let mut ran = 0u64;
    let mut stats = Stats::default();
    for seed in (start..start + count).filter(|s| s % SHARDS == shard) {
        ran += 1;
        match catch_unwind(|| run_seed(seed, false)) {
            Ok(s) => stats.add(&s),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| format!("seed {seed} failed"));
                failures.push(msg);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    println!("shard {shard}: {stats:?}");
    assert!(
        failures.is_empty(),
        "{} of {ran} seeds failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn random_seeds_0() {
    run_shard(0);
}

#[test]
fn random_seeds_1() {
    run_shard(1);
}

#[test]
fn random_seeds_2() {
    run_shard(2);
}

#[test]
fn random_seeds_3() {
    run_shard(3);
}

// ----- regressions -----
//
// Seeds that found core bugs. Each fails with its fix reverted, with the
// harness as committed alongside; a change to the harness's use of its
// random stream remaps seeds, so re-derive them (revert the fix, run
// RAFT_SEEDS) when changing the action mix.

/// Appends lost in Replicate state were never resent until the next
/// proposal: a heartbeat response from a lagging follower now triggers an
/// (empty if need be) append, which the follower rejects if it misses entries.
#[test]
fn seed_140_lost_appends_resent_after_heartbeat() {
    run_seed(140, false);
}

/// A full in-flight window whose messages were all lost blocked the
/// follower for good: a heartbeat response frees one slot.
#[test]
fn seed_114_full_inflight_window_of_lost_appends() {
    run_seed(114, false);
}

/// Replicas' random streams were shifted copies of each other (seed ^
/// id * golden with SplitMix64), so replicas ticked together drew equal
/// election timeouts and split votes forever.
#[test]
fn seed_12352_replicas_drew_equal_election_timeouts() {
    run_seed(12352, false);
}

/// A witness that got a higher term from a since-removed candidate ignored
/// the lower-term leader forever (no pre-vote, no check-quorum), and cannot
/// campaign to move the shard on: it now answers with its term.
#[test]
fn seed_4681_witness_with_higher_term_answers_leader() {
    run_seed(4681, false);
}
