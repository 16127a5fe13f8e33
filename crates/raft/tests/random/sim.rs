//! The harness's simulation: a cluster, the random actions that drive it,
//! and convergence after healing. The checks live in [`checks`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use longship_raft::testkit::{Cluster, ClusterOptions, format_message, format_status};
use longship_raft::{Index, Message, MessageType, ReplicaId, Rng, Role, Term, Update};

#[path = "actions.rs"]
mod actions;
#[path = "checks.rs"]
mod checks;

use checks::{CommitRec, Marks, Seen};

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
    /// Asynchronous storage writes: a node takes further updates while
    /// earlier writes are in flight, and is stepped meanwhile.
    async_writes: bool,
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
            async_storage_writes: false,
        };
        // Drawn apart from the options' stream, so that the seeds of
        // synchronous runs keep their histories.
        let async_writes = Rng::new(seed ^ 0xA5_1C_0A_0B).chance(0.5);
        let options = ClusterOptions {
            async_storage_writes: async_writes,
            ..options
        };
        Params {
            replicas,
            options,
            async_writes,
        }
    }
}

/// What a run exercised (to tune the action mix; printed by soak runs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) seeds: u64,
    pub(crate) committed: u64,
    pub(crate) leader_terms: u64,
    pub(crate) snapshots_delivered: u64,
    pub(crate) restarts: u64,
    pub(crate) delayed_writes_lost: u64,
    pub(crate) config_changes_applied: u64,
    pub(crate) reads_ready: u64,
    pub(crate) transfers: u64,
    /// Messages dropped because the receiver did not know the sender as a
    /// member (yet), counted on the cores alive at the end.
    pub(crate) non_member_drops: u64,
    /// Seeds run with asynchronous storage writes.
    pub(crate) async_seeds: u64,
    /// Times a node took an update while an earlier write was in flight.
    pub(crate) overlapping_writes: u64,
}

impl Stats {
    pub(crate) fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.committed += o.committed;
        self.leader_terms += o.leader_terms;
        self.snapshots_delivered += o.snapshots_delivered;
        self.restarts += o.restarts;
        self.delayed_writes_lost += o.delayed_writes_lost;
        self.async_seeds += o.async_seeds;
        self.overlapping_writes += o.overlapping_writes;
        self.config_changes_applied += o.config_changes_applied;
        self.reads_ready += o.reads_ready;
        self.transfers += o.transfers;
        self.non_member_drops += o.non_member_drops;
    }
}

/// One seed's run: the cluster, the faults in flight and the checkers' state.
pub(crate) struct Sim {
    pub(crate) stats: Stats,
    seed: u64,
    rng: Rng,
    c: Cluster,
    trace: bool,
    pub(crate) step: usize,
    /// Updates taken whose persistence is delayed, oldest first (at most
    /// one per node unless `async_writes`).
    pending: BTreeMap<ReplicaId, VecDeque<Update>>,
    /// Asynchronous storage writes (see [`Params::async_writes`]).
    async_writes: bool,
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

impl Sim {
    /// The run of `seed`; `force_sync` overrides the seed's draw of
    /// asynchronous storage writes.
    pub(crate) fn new(seed: u64, trace: bool, force_sync: bool) -> Sim {
        let mut p = Params::from_seed(seed);
        if force_sync {
            p.async_writes = false;
            p.options.async_storage_writes = false;
        }
        let voters: Vec<u64> = (1..=p.replicas).collect();
        if trace {
            println!(
                "seed {seed}: {} replicas, async writes {}, {:?}",
                p.replicas, p.async_writes, p.options
            );
        }
        let c = Cluster::new(&voters, p.options);
        let mut sim = Sim {
            stats: Stats {
                seeds: 1,
                async_seeds: u64::from(p.async_writes),
                ..Stats::default()
            },
            seed,
            rng: Rng::new(seed),
            c,
            trace,
            step: 0,
            pending: BTreeMap::new(),
            async_writes: p.async_writes,
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

    pub(crate) fn flush_trace(&mut self) {
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

    /// Live nodes that may be stepped now (no delayed persistence, unless
    /// writes are asynchronous).
    fn steppable(&self) -> Vec<ReplicaId> {
        self.live()
            .into_iter()
            .filter(|id| !self.blocked(*id))
            .collect()
    }

    /// Whether `id` may not be stepped now: it waits for a write, and
    /// writes are synchronous (an engine runs the whole cycle at once).
    fn blocked(&self, id: ReplicaId) -> bool {
        !self.async_writes && self.pending.contains_key(&id)
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
        let queue = self.pending.entry(id).or_default();
        queue.push_back(u);
        self.stats.overlapping_writes += u64::from(queue.len() > 1);
        true
    }

    /// Completes `id`'s oldest delayed write.
    fn finish(&mut self, id: ReplicaId) {
        let Some(queue) = self.pending.get_mut(&id) else {
            return;
        };
        let Some(u) = queue.pop_front() else {
            return;
        };
        if queue.is_empty() {
            self.pending.remove(&id);
        }
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
        if self.blocked(r.to) {
            self.reports.push_back(r);
            return;
        }
        self.note(|| format!("  report {} reject={}", format_message(&r), r.reject));
        if let Some(n) = self.c.nodes.get_mut(&r.to) {
            n.raft.step(r);
        }
    }

    // ----- random actions -----

    pub(crate) fn run(&mut self) {
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
        self.stats.non_member_drops = self
            .c
            .nodes
            .values()
            .map(|n| n.raft.non_member_messages())
            .sum();
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
            while self.pending.contains_key(&id) {
                self.finish(id);
            }
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
}
