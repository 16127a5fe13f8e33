//! The whole-system simulator: several NodeHosts in manual mode on one
//! thread, over the seeded fault network and fault-injecting file systems,
//! driven by client workloads through the public API, checked after every
//! step.
//!
//! A run is a sequence of rounds. In a round the network delivers what is
//! due, every live host runs each of its workers once, clients and the
//! administrator poll their requests and issue new ones, and the checkers
//! look at every host. Every few rounds logical time advances one tick
//! (one RTT). A run has three phases: faults (the workload under crashes,
//! partitions, packet faults and I/O errors), heal (every fault lifted,
//! every host restarted, outstanding requests resolved, then each shard
//! must accept and read back a new write and its replicas converge, within
//! a bound on ticks), and the final checks (linearizability of each shard's
//! history, per key; no acknowledged write lost or applied twice).
//!
//! Everything random is drawn from one seeded generator, so a seed replays
//! the same run; [`Report::trace_hash`] fingerprints it.

mod check;
mod client;
mod host;
mod master;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use longship::{Config, ReplicaId, ShardId};
use longship_raft::Rng;

use crate::kv::Fnv;
use crate::linearizability::Operation;
use crate::linearizability::kv::{KvInput, KvOutput};
use crate::net::{NetFaults, SimNet};

use self::check::Checker;
use self::client::{Admin, Client, Probe};
use self::host::HostSlot;

/// Milliseconds per tick given to the NodeHosts (only converts timeouts).
const RTT_MS: u64 = 10;
/// Rounds per tick.
const ROUNDS_PER_TICK: u64 = 4;

/// What a run does. [`SimConfig::from_seed`] draws one from the seed.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// NodeHosts (3..=5).
    pub hosts: usize,
    /// Shards (each with three replicas at the start).
    pub shards: u64,
    /// Clients per shard.
    pub clients_per_shard: usize,
    /// Client operations to invoke during the fault phase.
    pub ops: u64,
    /// Bound on the rounds of the fault phase.
    pub fault_rounds_max: u64,
    /// Bound on the ticks of the heal phase (resolution, progress and
    /// convergence together).
    pub heal_ticks_max: u64,
    /// Inject faults at all (false: a fault-free run).
    pub faults: bool,
    /// Bound on the linearizability checker's steps per shard.
    pub lin_steps_max: u64,
    /// Master mode: the longship master runs on three hosts and creates,
    /// repairs and balances the shards, while hosts also die for good and
    /// join (see the `master` module).
    pub master: bool,
    /// The NodeHosts run asynchronous log writes
    /// (`NodeHostConfig::async_log_writes`); writes sometimes stay queued
    /// across rounds (and are lost by a crash).
    pub async_log_writes: bool,
}

/// Whether seed `seed` runs asynchronous log writes: half the seeds, drawn
/// apart from the other draws so that a seed's other choices stay as they
/// were before the option existed.
fn draws_async_log_writes(seed: u64) -> bool {
    Rng::new(seed ^ 0x5eed_a5c0_0000_0003).chance(0.5)
}

impl SimConfig {
    /// The configuration a seed stands for, with `ops` operations.
    pub fn from_seed(seed: u64, ops: u64) -> SimConfig {
        let mut rng = Rng::new(seed ^ 0x5eed_c0f1_9000_0001);
        SimConfig {
            seed,
            hosts: 3 + rng.below(3) as usize,
            shards: 8 + rng.below(5),
            clients_per_shard: 2 + rng.below(3) as usize,
            ops,
            fault_rounds_max: ops * 4 + 4_000,
            heal_ticks_max: 2_000,
            faults: true,
            lin_steps_max: 4_000_000,
            master: false,
            async_log_writes: draws_async_log_writes(seed),
        }
    }

    /// The master-mode configuration a seed stands for, with `ops`
    /// operations (the hosts, deaths and joins are drawn by the run).
    pub fn master_from_seed(seed: u64, ops: u64) -> SimConfig {
        let mut rng = Rng::new(seed ^ 0x5eed_c0f1_9000_0002);
        SimConfig {
            seed,
            hosts: 0,
            shards: 6 + rng.below(5),
            clients_per_shard: 2 + rng.below(2) as usize,
            ops,
            fault_rounds_max: ops * 4 + 4_000 + 1_200 * ROUNDS_PER_TICK,
            // Repairs and balancing after the heal, one move per shard at
            // a time (balancing one move at a time in all).
            heal_ticks_max: 8_000,
            faults: true,
            lin_steps_max: 4_000_000,
            master: true,
            async_log_writes: draws_async_log_writes(seed),
        }
    }
}

/// The outcome of a run that passed every check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Fingerprint of everything that happened; equal for equal seeds.
    pub trace_hash: u64,
    /// Whether the run had asynchronous log writes.
    pub async_log_writes: bool,
    /// Rounds run.
    pub rounds: u64,
    /// Ticks run.
    pub ticks: u64,
    /// Client operations invoked (reads and writes).
    pub ops: u64,
    /// Operations that completed with a known outcome.
    pub ops_ok: u64,
    /// Writes whose outcome stayed unknown.
    pub writes_unknown: u64,
    /// Host crashes.
    pub crashes: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Membership changes completed.
    pub membership_changes: u64,
    /// Exported snapshots checked whole.
    pub exports: u64,
    /// Ordered membership changes refused as based on a stale membership
    /// (and asked again).
    pub stale_config_changes: u64,
    /// Leader transfers requested.
    pub transfers: u64,
    /// Snapshots requested.
    pub snapshots: u64,
    /// I/O faults injected.
    pub io_faults: u64,
    /// Packets delivered.
    pub packets: u64,
    /// Shards whose linearizability check ran out of budget.
    pub lin_unknown: u64,
    /// Crashes that damaged the newest durable bytes of the host's log.
    pub tail_damages: u64,
    /// Master mode: hosts that died for good.
    pub host_deaths: u64,
    /// Master mode: hosts that joined after the start.
    pub host_joins: u64,
    /// Master mode: reports proposed to the master.
    pub master_reports: u64,
    /// Master mode: answers delivered to hosts.
    pub master_answers: u64,
    /// Master mode: moves the master finished (repairs and balancing).
    pub master_moves: u64,
    /// Master mode: of those, repairs.
    pub master_repairs: u64,
    /// Master mode: moves the master gave up.
    pub master_moves_aborted: u64,
    /// Master mode: hosts the master declared dead.
    pub master_declared_dead: u64,
    /// Master mode: ticks from the heal until every shard was back to
    /// its replica count and balanced.
    pub master_heal_ticks: u64,
}

/// Why a run failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// Round of the failure.
    pub round: u64,
    /// What went wrong.
    pub message: String,
    /// Whether the run was in master mode.
    pub master: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} failed at round {}: {}\n  replay: cargo run -p longship-sim --release -- --seed {}{}",
            self.seed,
            self.round,
            self.message,
            self.seed,
            if self.master { " --master" } else { "" }
        )
    }
}

/// Runs the simulation of `cfg`.
pub fn run(cfg: &SimConfig) -> Result<Report, Failure> {
    let mut sim = Sim::new(cfg.clone());
    match sim.run_all() {
        Ok(()) => Ok(sim.report()),
        Err(message) => Err(Failure {
            seed: cfg.seed,
            round: sim.round,
            message,
            master: cfg.master,
        }),
    }
}

/// Runs seed `seed` with `ops` operations, catching panics as failures.
pub fn run_seed(seed: u64, ops: u64) -> Result<Report, Failure> {
    run_config(SimConfig::from_seed(seed, ops))
}

/// [`run_seed`] with synchronous log writes whatever the seed draws: the
/// run a seed found before the simulator drew asynchronous writes stood for.
pub fn run_seed_sync(seed: u64, ops: u64) -> Result<Report, Failure> {
    run_config(SimConfig {
        async_log_writes: false,
        ..SimConfig::from_seed(seed, ops)
    })
}

/// [`run_master_seed`] with synchronous log writes whatever the seed draws.
pub fn run_master_seed_sync(seed: u64, ops: u64) -> Result<Report, Failure> {
    run_config(SimConfig {
        async_log_writes: false,
        ..SimConfig::master_from_seed(seed, ops)
    })
}

/// Runs seed `seed` in master mode with `ops` operations, catching panics
/// as failures.
pub fn run_master_seed(seed: u64, ops: u64) -> Result<Report, Failure> {
    run_config(SimConfig::master_from_seed(seed, ops))
}

fn run_config(cfg: SimConfig) -> Result<Report, Failure> {
    let seed = cfg.seed;
    let master = cfg.master;
    match std::panic::catch_unwind(|| run(&cfg)) {
        Ok(r) => r,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_string());
            Err(Failure {
                seed,
                round: 0,
                message: format!("panicked: {message}"),
                master,
            })
        }
    }
}

/// The phase of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Master mode: the master starts and creates the shards.
    Setup,
    Faults,
    Heal,
}

/// A shard as the simulator tracks it.
struct ShardState {
    id: ShardId,
    /// Voting members whose addition is certain (replica → host), as far as
    /// the administrator knows.
    members: BTreeMap<ReplicaId, usize>,
    /// Non-voting members whose addition is certain (replica → host).
    non_voting: BTreeMap<ReplicaId, usize>,
    /// Witnesses whose addition is certain (replica → host): they vote
    /// and count in quorums but hold no state machine data.
    witnesses: BTreeMap<ReplicaId, usize>,
    next_replica: u64,
    keys: Vec<String>,
    /// The client history (operation times are `Sim::clock` values).
    history: Vec<Operation<KvInput, KvOutput>>,
    config: Config,
}

/// Fault intensities of a run.
#[derive(Clone, Copy, Debug)]
struct FaultPlan {
    net: NetFaults,
    crash_per_round: f64,
    partition_per_round: f64,
    heal_link_per_round: f64,
    io: longship_storage::vfs::FaultProbabilities,
    transfer_per_round: f64,
    snapshot_per_round: f64,
    membership_per_round: f64,
    /// A host misses a tick.
    clock_skip: f64,
    /// A host gets a tick twice.
    clock_double: f64,
    /// At a crash, the newest durable bytes of the host's log are damaged
    /// (a disk losing an acknowledged write; docs/recovery.md).
    tail_damage_per_crash: f64,
}

/// A unique directory prefix per run in this process: NodeHosts lock their
/// directory process-wide, and runs may go on in parallel.
static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The simulator's state.
pub(crate) struct Sim {
    cfg: SimConfig,
    rng: Rng,
    trace: Fnv,
    round: u64,
    ticks: u64,
    /// Logical time of history events (strictly increasing).
    clock: u64,
    phase: Phase,
    net: SimNet,
    hosts: Vec<HostSlot>,
    shards: Vec<ShardState>,
    clients: Vec<Client>,
    admins: Vec<Admin>,
    probes: Vec<Probe>,
    /// Values of the final reads, by key.
    finals: BTreeMap<String, String>,
    checker: Checker,
    plan: FaultPlan,
    /// Draws of the tail-damage fault (its own stream).
    damage_rng: Rng,
    /// Print events to stderr (`LONGSHIP_SIM_LOG=1`).
    log: bool,
    stats: Report,
    /// Master mode's state.
    master: Option<master::MasterSim>,
    /// Round at which the fault phase began.
    fault_start_round: u64,
}

impl Sim {
    fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let run = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let net = SimNet::new();
        let master_plan = cfg.master.then(|| master::MasterPlan::draw(cfg.seed));
        let host_count = master_plan
            .as_ref()
            .map_or(cfg.hosts, |p| p.initial_hosts + p.joins);
        let hosts: Vec<HostSlot> = (0..host_count)
            .map(|i| {
                let dir = PathBuf::from(format!("/sim{run:016x}/host{i}"));
                let mut slot = HostSlot::new(format!("host{i}:7000"), dir, rng.next_u64());
                // Master mode: every host joins the cluster when started.
                slot.gone = master_plan.is_some();
                slot
            })
            .collect();
        let mut plan = if cfg.faults {
            FaultPlan::draw(&mut rng)
        } else {
            FaultPlan::none()
        };
        // The tail-damage fault has its own random stream.
        let mut damage_rng = Rng::new(cfg.seed ^ 0x7a11_da3a_6e5e_ed01);
        if cfg.faults && damage_rng.chance(0.5) {
            plan.tail_damage_per_crash = 0.05 + 0.45 * (damage_rng.below(1000) as f64 / 1000.0);
        }
        if cfg.master {
            // The master changes memberships alone (and does not know of
            // recovery guards: no tail damage, docs/master.md says why).
            plan.tail_damage_per_crash = 0.0;
            plan.membership_per_round = 0.0;
            plan.transfer_per_round = 0.0;
        }
        let snapshot_entries = match rng.below(3) {
            0 => 0,
            _ => 8 + rng.below(56),
        };
        let compaction_overhead = rng.below(16);
        let heartbeat_rtt = 1 + rng.below(2);
        let election_rtt = 2 * heartbeat_rtt + 4 + rng.below(12);
        let quiesce = rng.chance(0.2);
        let max_uncommitted_bytes = if rng.chance(0.25) {
            1024 + rng.below(8192)
        } else {
            0
        };
        let mut shards = Vec::new();
        for s in 1..=cfg.shards {
            let config = Config {
                election_rtt,
                heartbeat_rtt,
                quiesce,
                max_uncommitted_bytes,
                check_quorum: true,
                pre_vote: true,
                // Half the shards name the membership each change is based
                // on (read from the replica asked, so sometimes stale).
                ordered_config_change: rng.chance(0.5),
                snapshot_entries,
                compaction_overhead,
                // Half the shards apply small batches in the step worker
                // (no apply worker hand-off), half through the apply workers.
                max_inline_apply_bytes: if rng.chance(0.5) { 64 << 10 } else { 0 },
                ..Config::new(ShardId(s), ReplicaId(1))
            };
            shards.push(ShardState {
                id: ShardId(s),
                members: BTreeMap::new(),
                non_voting: BTreeMap::new(),
                witnesses: BTreeMap::new(),
                next_replica: 1,
                keys: (0..3).map(|k| format!("s{s}k{k}")).collect(),
                history: Vec::new(),
                config,
            });
        }
        let master = master_plan.map(|p| {
            let configs = shards.iter().map(|s| (s.id, s.config.clone())).collect();
            master::MasterSim::new(p, configs)
        });
        let mut sim = Sim {
            cfg,
            rng,
            trace: Fnv::default(),
            round: 0,
            ticks: 0,
            clock: 0,
            phase: Phase::Faults,
            net,
            hosts,
            shards,
            clients: Vec::new(),
            admins: Vec::new(),
            probes: Vec::new(),
            finals: BTreeMap::new(),
            checker: Checker::default(),
            plan,
            damage_rng,
            log: std::env::var_os("LONGSHIP_SIM_LOG").is_some(),
            stats: Report::default(),
            master,
            fault_start_round: 0,
        };
        if sim.master.is_none() {
            sim.place_replicas();
        }
        sim.make_clients();
        sim
    }

    /// Three replicas per shard on distinct hosts.
    fn place_replicas(&mut self) {
        let n = self.hosts.len();
        for si in 0..self.shards.len() {
            let mut chosen = BTreeSet::new();
            while chosen.len() < 3 {
                chosen.insert(self.rng.below(n as u64) as usize);
            }
            let shard = &mut self.shards[si];
            let mut initial = BTreeMap::new();
            for &h in &chosen {
                let id = ReplicaId(shard.next_replica);
                shard.next_replica += 1;
                shard.members.insert(id, h);
                initial.insert(id, self.hosts[h].addr.clone());
            }
            for (&id, &h) in &shard.members {
                let cfg = Config {
                    replica_id: id,
                    ..shard.config.clone()
                };
                self.hosts[h].add_replica(cfg, Some(initial.clone()));
            }
        }
    }

    fn report(&self) -> Report {
        let mut stats = self.stats.clone();
        if let Some(m) = &self.master {
            stats.host_deaths = m.deaths;
            stats.host_joins = m.joined;
            stats.master_reports = m.reports_delivered;
            stats.master_answers = m.answers_delivered;
            if let Some(s) = &m.state {
                stats.master_moves = s.counters.moves_done;
                stats.master_repairs = s.counters.repairs_done;
                stats.master_moves_aborted = s.counters.moves_aborted;
                stats.master_declared_dead = s.counters.hosts_declared_dead;
            }
        }
        Report {
            seed: self.cfg.seed,
            trace_hash: self.trace.0,
            async_log_writes: self.cfg.async_log_writes,
            rounds: self.round,
            ticks: self.ticks,
            packets: self.net.delivered,
            io_faults: self.hosts.iter().map(|h| h.fs.faults_injected()).sum(),
            ..stats
        }
    }

    /// A new history timestamp.
    fn now(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn timeout(&self, ticks: u64) -> Duration {
        Duration::from_millis(RTT_MS * ticks)
    }

    fn trace_event(&mut self, what: &str, a: u64, b: u64) {
        if self.log {
            eprintln!("[round {} tick {}] {what} {a} {b}", self.round, self.ticks);
        }
        self.trace.write(what.as_bytes());
        self.trace.write_u64(a);
        self.trace.write_u64(b);
    }

    fn run_all(&mut self) -> Result<(), String> {
        if self.master.is_some() {
            self.master_setup()?;
        } else {
            for h in 0..self.hosts.len() {
                self.start_host(h)?;
            }
        }
        // Fault phase: the workload under faults (in master mode at least
        // the plan's ticks, so that deaths, joins and repairs happen under
        // load).
        let min_rounds = self
            .master
            .as_ref()
            .map_or(0, |m| m.plan.fault_ticks_min * ROUNDS_PER_TICK);
        while (self.stats.ops < self.cfg.ops || self.round < self.fault_start_round + min_rounds)
            && self.round < self.fault_start_round + self.cfg.fault_rounds_max
        {
            self.inject_faults()?;
            self.step()?;
        }
        self.heal()
    }

    /// One round: restarts due, network, workers, time, requests, checks.
    fn step(&mut self) -> Result<(), String> {
        self.round += 1;
        self.restart_due_hosts()?;
        self.net.pump(self.round, &mut self.rng, &mut self.trace);
        let mut order: Vec<usize> = (0..self.hosts.len())
            .filter(|&h| self.hosts[h].nh.is_some())
            .collect();
        for i in (1..order.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        for h in order {
            // A slow host sometimes skips a round.
            if self.phase == Phase::Faults && self.rng.chance(0.05) {
                continue;
            }
            // Asynchronous log writes sometimes stay queued for a round.
            let defer = self.cfg.async_log_writes && self.rng.chance(0.3);
            if let Some(nh) = &self.hosts[h].nh {
                if defer {
                    nh.run_once_deferring_writes();
                } else {
                    nh.run_once();
                }
            }
        }
        if self.round.is_multiple_of(ROUNDS_PER_TICK) {
            self.ticks += 1;
            let skew = self.phase == Phase::Faults;
            for slot in &mut self.hosts {
                let Some(nh) = &slot.nh else { continue };
                // Clocks drift: a host's tick comes late or twice.
                let ticks = if skew && self.rng.chance(self.plan.clock_skip) {
                    0
                } else if skew && self.rng.chance(self.plan.clock_double) {
                    2
                } else {
                    1
                };
                for _ in 0..ticks {
                    nh.tick();
                }
                slot.local_ticks += ticks;
            }
        }
        if self.master.is_some() {
            self.master_round()?;
        }
        if self.log
            && self.round.is_multiple_of(ROUNDS_PER_TICK)
            && std::env::var("LONGSHIP_SIM_DUMP_TICKS")
                .is_ok_and(|v| v.split(',').any(|t| t.parse() == Ok(self.ticks)))
        {
            eprintln!(
                "[round {} tick {}] dump:\n{}",
                self.round,
                self.ticks,
                self.dump()
            );
        }
        self.poll_clients()?;
        self.poll_admins()?;
        self.poll_probes()?;
        self.check_safety()?;
        self.crash_sick_hosts()?;
        Ok(())
    }

    /// Faults of this round.
    fn inject_faults(&mut self) -> Result<(), String> {
        let plan = self.plan;
        let n = self.hosts.len();
        let down = self
            .hosts
            .iter()
            .filter(|h| h.nh.is_none() && !h.gone)
            .count();
        if self.master.is_some() {
            self.master_faults()?;
        }
        if down < n.saturating_sub(1) / 2 && self.rng.chance(plan.crash_per_round) {
            let live: Vec<usize> = (0..n).filter(|&h| self.hosts[h].nh.is_some()).collect();
            if !live.is_empty() {
                let h = live[self.rng.below(live.len() as u64) as usize];
                let delay = ROUNDS_PER_TICK * (2 + self.rng.below(60));
                self.crash_host(h, delay)?;
            }
        }
        if self.rng.chance(plan.partition_per_round) && self.net.cut_links().len() < 2 * n {
            self.stats.partitions += 1;
            let a = self.rng.below(n as u64) as usize;
            let kind = self.rng.below(3);
            let (aa, others) = (
                self.hosts[a].addr.clone(),
                (0..n)
                    .filter(|&b| b != a)
                    .map(|b| self.hosts[b].addr.clone())
                    .collect::<Vec<_>>(),
            );
            match kind {
                // Isolate one host both ways.
                0 => {
                    for b in &others {
                        self.net.cut(&aa, b);
                        self.net.cut(b, &aa);
                    }
                }
                // Cut one link both ways.
                1 => {
                    let b = &others[self.rng.below(others.len() as u64) as usize];
                    self.net.cut(&aa, b);
                    self.net.cut(b, &aa);
                }
                // Cut one link one way.
                _ => {
                    let b = &others[self.rng.below(others.len() as u64) as usize];
                    self.net.cut(&aa, b);
                }
            }
            self.trace_event("partition", a as u64, kind);
        }
        if !self.net.cut_links().is_empty() && self.rng.chance(plan.heal_link_per_round) {
            let links: Vec<(String, String)> = self.net.cut_links().iter().cloned().collect();
            let (a, b) = &links[self.rng.below(links.len() as u64) as usize];
            self.net.restore(a, b);
            self.trace_event("restore", links.len() as u64, 0);
        }
        for si in 0..self.shards.len() {
            if self.rng.chance(plan.transfer_per_round) {
                self.request_transfer(si);
            }
            if self.rng.chance(plan.snapshot_per_round) {
                self.start_snapshot(si);
            }
            if self.rng.chance(plan.membership_per_round) {
                self.start_membership_change(si)?;
            }
        }
        Ok(())
    }

    /// Lifts every fault, resolves what is outstanding, then requires
    /// progress and convergence of every shard within the bound, and runs
    /// the final checks.
    fn heal(&mut self) -> Result<(), String> {
        self.phase = Phase::Heal;
        self.net.heal();
        if self.master.is_some() {
            self.master_heal()?;
        }
        for slot in &mut self.hosts {
            slot.fs
                .set_probabilities(longship_storage::vfs::FaultProbabilities::default());
            if slot.nh.is_none() && !slot.gone {
                slot.restart_at = Some(self.round + 1);
            }
        }
        let heal_start = self.ticks;
        let deadline = self.ticks + self.cfg.heal_ticks_max;
        // Outstanding client requests and membership changes resolve.
        while !self.quiet() {
            if self.ticks >= deadline {
                return Err(format!(
                    "outstanding requests not resolved within {} ticks of healing: {}\n{}",
                    self.cfg.heal_ticks_max,
                    self.outstanding(),
                    self.dump()
                ));
            }
            self.step()?;
        }
        // Every shard accepts a new write and reads it back.
        self.start_probes();
        while self.probes.iter().any(|p| !p.done()) {
            if self.ticks >= deadline {
                let stuck: Vec<String> = self
                    .probes
                    .iter()
                    .filter(|p| !p.done())
                    .map(|p| p.describe())
                    .collect();
                return Err(format!(
                    "no progress within {} ticks of healing: {}\n{}",
                    self.cfg.heal_ticks_max,
                    stuck.join("; "),
                    self.dump()
                ));
            }
            self.step()?;
        }
        // Every member of every shard converges (in master mode: every
        // shard is back to its replica count, as the master placed it).
        loop {
            let why = if self.master.is_some() {
                self.master_divergence()
            } else {
                self.divergence()
            };
            match why {
                None => break,
                Some(why) if self.ticks >= deadline => {
                    return Err(format!(
                        "replicas did not converge within {} ticks of healing: {why}\n{}",
                        self.cfg.heal_ticks_max,
                        self.dump()
                    ));
                }
                Some(_) => self.step()?,
            }
        }
        self.stats.master_heal_ticks = if self.master.is_some() {
            self.ticks - heal_start
        } else {
            0
        };
        self.final_reads(deadline)?;
        self.check_histories()
    }

    /// Every host's view of its replicas, for failure messages.
    fn dump(&self) -> String {
        let mut out = String::new();
        for (h, slot) in self.hosts.iter().enumerate() {
            let Some(nh) = &slot.nh else {
                out.push_str(&format!("  host {h}: down\n"));
                continue;
            };
            let info = nh.get_node_host_info();
            for s in &info.shards {
                let log = info
                    .log_info
                    .iter()
                    .find(|l| l.shard_id == s.shard_id && l.replica_id == s.replica_id)
                    .map(|l| format!("log {}..={}", l.first_index, l.last_index))
                    .unwrap_or_default();
                let core = nh
                    .raft_status(s.shard_id)
                    .map(|st| {
                        let ids = |m: &std::collections::BTreeMap<ReplicaId, String>| {
                            m.keys().map(|r| r.0.to_string()).collect::<Vec<_>>().join(",")
                        };
                        format!(
                            " [{:?} term {} vote {} commit {} applied {}; voters {} non-voting {} witnesses {} at {}]",
                            st.role,
                            st.hard_state.term,
                            st.hard_state.vote,
                            st.hard_state.commit,
                            st.applied,
                            ids(&st.membership.voters),
                            ids(&st.membership.non_votings),
                            ids(&st.membership.witnesses),
                            st.membership.config_change_id
                        )
                    })
                    .unwrap_or_default();
                out.push_str(&format!(
                    "  host {h}: {} replica {} leader {} term {} applied {} snapshot {} {log}{}{core}\n",
                    s.shard_id,
                    s.replica_id,
                    s.leader_id,
                    s.term,
                    s.applied,
                    s.snapshot_index,
                    if s.failed { " FAILED" } else { "" }
                ));
                if s.quiesced {
                    out.push_str("    (quiesced)\n");
                }
                if let Some(g) = s.recovery_guard {
                    out.push_str(&format!("    (recovery guard {g:?})\n"));
                }
            }
        }
        out
    }

    /// Whether no client, administrator or host restart is outstanding.
    fn quiet(&self) -> bool {
        self.clients.iter().all(|c| c.is_idle())
            && self.admins.iter().all(|a| a.is_idle())
            && self.hosts.iter().all(|h| h.nh.is_some() || h.gone)
    }

    fn outstanding(&self) -> String {
        let mut out = Vec::new();
        for c in self.clients.iter().filter(|c| !c.is_idle()) {
            out.push(c.describe());
        }
        for a in self.admins.iter().filter(|a| !a.is_idle()) {
            out.push(a.describe());
        }
        for h in self.hosts.iter().filter(|h| h.nh.is_none() && !h.gone) {
            out.push(format!("{} down", h.addr));
        }
        out.join("; ")
    }
}

impl FaultPlan {
    fn none() -> FaultPlan {
        FaultPlan {
            net: NetFaults::default(),
            crash_per_round: 0.0,
            partition_per_round: 0.0,
            heal_link_per_round: 0.0,
            io: Default::default(),
            transfer_per_round: 0.0,
            snapshot_per_round: 0.0,
            membership_per_round: 0.0,
            clock_skip: 0.0,
            clock_double: 0.0,
            tail_damage_per_crash: 0.0,
        }
    }

    fn draw(rng: &mut Rng) -> FaultPlan {
        let pick = |rng: &mut Rng, max: f64| {
            if rng.chance(0.25) {
                0.0
            } else {
                max * (rng.below(1000) as f64 / 1000.0)
            }
        };
        let net = NetFaults {
            drop: pick(rng, 0.05),
            duplicate: pick(rng, 0.03),
            delay: pick(rng, 0.15),
            delay_rounds_max: 1 + rng.below(4 * ROUNDS_PER_TICK),
            reorder: pick(rng, 0.5),
        };
        let io_scale = if rng.chance(0.5) { 0.0 } else { 1.0 };
        FaultPlan {
            net,
            crash_per_round: pick(rng, 1.0 / 150.0),
            partition_per_round: pick(rng, 1.0 / 100.0),
            heal_link_per_round: 1.0 / 40.0,
            io: longship_storage::vfs::FaultProbabilities {
                write_error: io_scale * pick(rng, 0.0005),
                torn_write: io_scale * pick(rng, 0.0005),
                sync_error: io_scale * pick(rng, 0.0005),
            },
            transfer_per_round: pick(rng, 1.0 / 800.0),
            snapshot_per_round: pick(rng, 1.0 / 800.0),
            membership_per_round: pick(rng, 1.0 / 1500.0),
            clock_skip: pick(rng, 0.2),
            clock_double: pick(rng, 0.2),
            // Drawn by `Sim::new` from its own stream (seeds from before
            // this fault keep their other draws).
            tail_damage_per_crash: 0.0,
        }
    }
}
