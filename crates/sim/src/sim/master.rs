//! Master mode (`longship-sim --master`): the longship master
//! (`longship-master`) runs as an ordinary shard on three of the simulated
//! hosts, every host reports to it with the reporter's own code
//! ([`ReportRounds`], the reporting loop of `MasterReporter` without its
//! thread; the simulator plays the RPC a [`MasterClient`] makes), and the
//! master creates, repairs and balances the application
//! shards while the usual faults go on, plus hosts that die for good and
//! new hosts that join.
//!
//! How the pieces map onto the simulation:
//! - **Time.** Each host has its own simulated clock (the ticks it was
//!   given, skew included); a master replica's [`MasterTicker`] reads that
//!   clock, so the master's replicated time is simulated time and a seed
//!   replays exactly. Reports are due every `report_ticks` of the host's
//!   clock, master ticks every `tick_ticks`.
//! - **The RPC.** A host sends its next report once it has the answer
//!   to its previous one, or stopped waiting for it (as `TcpMasterClient`
//!   does): the simulator takes the report (`ReportRounds::prepare`, the
//!   first half of a reporter's round), carries it to a host that runs a
//!   master replica (the leader's first) over the simulated links (a cut
//!   link or a dropped packet loses it, a duplicated one is proposed
//!   twice), proposes it there as `Command::Report`, and carries the
//!   applied entry's answer back (lost, or delayed: the master meanwhile
//!   applies other reports and ticks, so an answer may be carried out
//!   after the master moved on); the host carries it out
//!   (`ReportRounds::carry_out`, the second half).
//! - **Replicas.** [`SimFactory`] starts what the master asks for: the
//!   key-value state machine of the simulation, or a master replica (the
//!   master manages its own shard too, so a lost master member is
//!   replaced). A host that restarts starts every replica it holds data
//!   of, as the kv's placed mode does.
//!
//! Checks, besides the simulator's safety, convergence and
//! linearizability checks (each failure fails the seed):
//! - no master replica ever panics applying an entry (`decide`'s
//!   assertions: one operation per shard, fresh ids, ...);
//! - a removed replica id is never reused: no membership any replica
//!   applied lists as a member an id that an older membership listed as
//!   removed, and no operation of the master adds an id seen removed;
//! - every membership change the master asks for is ordered (based on
//!   the config change id of the membership it saw), and never two
//!   concurrent changes for one shard that could both take effect: when a
//!   host proposes a change the master asked for, no other change of that
//!   shard may be in flight (proposed and not completed) anywhere unless
//!   it already took effect or both are ordered (then the first applied
//!   voids the rest);
//! - the master's changes never cost a live quorum: when a shard's
//!   membership changes, if it had a quorum of live voters before, it has
//!   one after ("live": the host runs, or went down too recently for any
//!   master to know, see [`Sim::replica_live`]);
//! - after healing, within the bound: every shard (the master's own
//!   included) has exactly its replica count of voters, all on live hosts,
//!   as the master placed them, no non-voting member left, no replica or
//!   data of a removed one left anywhere, nothing in flight, the hosts
//!   dead for good declared dead, and replicas per host within one of
//!   each other.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use longship::{
    Config, HostReport, Index, MasterClient, MasterClientError, MasterRequest, NodeHost, ReplicaId,
    ReportRounds, ReportingOptions, RequestHandle, Session, ShardId, SmEntry, SmError, SmResult,
    Start, StateMachine, StopFlag,
};
use longship_master::model::{Op, Request};
use longship_master::sm::RESULT_OK;
use longship_master::{
    Command, MASTER_SHARD_ID, MasterConfig, MasterOptions, MasterState, MasterStateMachine,
    MasterTicker, master_replica_config, report_from, to_master_request,
};
use longship_raft::Rng;

use super::host::HostSlot;
use super::{Phase, ROUNDS_PER_TICK, RTT_MS, Sim};
use crate::kv::{DIGEST_QUERY, Digest, Fnv, SimKv};

/// The deployment id of every simulated host.
pub(super) const DEPLOYMENT_ID: u64 = 7;
/// Replicas per application shard.
const REPLICAS: u32 = 3;
/// Ticks the set-up (master elected, shards created) may take.
const SETUP_TICKS_MAX: u64 = 3_000;
/// Ticks a report proposal may take.
const RPC_TIMEOUT_TICKS: u64 = 30;

/// The master-mode settings a seed draws.
#[derive(Clone, Debug)]
pub(super) struct MasterPlan {
    /// What master replicas run with.
    pub(super) options: MasterOptions,
    /// Host-clock ticks between two reports of a host.
    pub(super) report_ticks: u64,
    /// Host-clock ticks between two master ticks.
    pub(super) tick_ticks: u64,
    /// `snapshot_entries` of master replicas.
    pub(super) master_snapshot_entries: u64,
    /// Hosts running at the start (the first three run the master).
    pub(super) initial_hosts: usize,
    /// Hosts that die for good during the fault phase (at most).
    pub(super) deaths: usize,
    /// Hosts that join during the fault phase.
    pub(super) joins: usize,
    /// Least ticks of the fault phase.
    pub(super) fault_ticks_min: u64,
    /// Most rounds a client waits between two operations.
    pub(super) think_rounds_max: u64,
}

impl MasterPlan {
    /// Draws a plan (from its own stream of the seed).
    pub(super) fn draw(seed: u64) -> MasterPlan {
        let mut rng = Rng::new(seed ^ 0x6d61_7374_6572_0001);
        let report_ticks = 3 + rng.below(6);
        let tick_ticks = 2 + rng.below(4);
        // Several report intervals, and sometimes shorter than a long crash
        // (a host that comes back after being declared dead is cleaned).
        let dead_after_ticks = 8 * report_ticks + rng.below(80);
        let initial_hosts = 4 + rng.below(3) as usize;
        let deaths = 1 + rng.below(2) as usize;
        let joins = rng.below(3) as usize;
        // Never fewer than four hosts left: a shard of three replicas that
        // loses one needs a fourth host to move to.
        let deaths = deaths.min(initial_hosts + joins - 4);
        MasterPlan {
            options: MasterOptions {
                config: MasterConfig {
                    deployment_id: DEPLOYMENT_ID,
                    dead_after_ms: dead_after_ticks * RTT_MS,
                    catch_up_lag: 5 + rng.below(40),
                    rebalance: true,
                    balance_interval_ms: (10 + rng.below(40)) * RTT_MS,
                    transfer_timeout_ms: 100 * RTT_MS,
                    max_tick_ms: 20 * RTT_MS,
                },
                tick_interval: std::time::Duration::from_millis(tick_ticks * RTT_MS),
                propose_timeout: std::time::Duration::from_millis(20 * RTT_MS),
                manage_master_shard: true,
            },
            report_ticks,
            tick_ticks,
            master_snapshot_entries: if rng.chance(0.5) {
                20 + rng.below(100)
            } else {
                1_000
            },
            initial_hosts,
            deaths,
            joins,
            fault_ticks_min: 600 + rng.below(600),
            think_rounds_max: 8 + rng.below(32),
        }
    }

    /// Ticks after which a host that went down counts as gone for the
    /// quorum check: no master can know of a death sooner than its
    /// `dead_after_ms` after the host's last report (and a new master
    /// leader gives every host that long again).
    fn grace_ticks(&self) -> u64 {
        2 * self.options.config.dead_after_ms / RTT_MS + 4 * self.report_ticks + 100
    }
}

/// What the factory and the master state machines tell the simulator.
#[derive(Default)]
pub(super) struct FactoryLog {
    /// Replicas started through the factory: (shard, replica).
    started: Vec<(ShardId, ReplicaId)>,
    /// Panics of master replicas applying entries.
    violations: Vec<String>,
}

/// A [`MasterStateMachine`] whose panics (its invariant assertions) are
/// recorded for the simulator before the replica fails.
struct CheckedMaster {
    inner: MasterStateMachine,
    log: Arc<Mutex<FactoryLog>>,
}

impl StateMachine for CheckedMaster {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.update(entries))) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                self.log
                    .lock()
                    .expect("factory log")
                    .violations
                    .push(msg.clone());
                Err(SmError::new(format!(
                    "master state machine panicked: {msg}"
                )))
            }
        }
    }

    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        self.inner.lookup(query)
    }

    fn save_snapshot(&self, w: &mut dyn std::io::Write, stop: &StopFlag) -> Result<(), SmError> {
        self.inner.save_snapshot(w, stop)
    }

    fn recover_from_snapshot(
        &mut self,
        r: &mut dyn std::io::Read,
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        self.inner.recover_from_snapshot(r, stop)
    }
}

/// Starts the replicas the master asks for (and those a restarted host
/// holds data of).
pub(super) struct SimFactory {
    configs: Arc<BTreeMap<ShardId, Config>>,
    master: MasterConfig,
    master_snapshot_entries: u64,
    log: Arc<Mutex<FactoryLog>>,
}

impl longship::ReplicaFactory for SimFactory {
    fn start_replica(
        &self,
        nh: &NodeHost,
        shard_id: ShardId,
        replica_id: ReplicaId,
        start: Start,
        non_voting: bool,
    ) -> longship::Result<()> {
        if shard_id == MASTER_SHARD_ID {
            let cfg = Config {
                is_non_voting: non_voting,
                snapshot_entries: self.master_snapshot_entries,
                compaction_overhead: 20,
                ..master_replica_config(replica_id)
            };
            let (config, log) = (self.master.clone(), self.log.clone());
            nh.start_replica(
                start,
                move |_, _| {
                    Box::new(CheckedMaster {
                        inner: MasterStateMachine::new(config),
                        log,
                    })
                },
                cfg,
            )?;
        } else {
            let template = self.configs.get(&shard_id).ok_or_else(|| {
                longship::Error::Rejected(format!("the simulation has no shard {shard_id}"))
            })?;
            let cfg = Config {
                replica_id,
                is_non_voting: non_voting,
                ..template.clone()
            };
            nh.start_replica(start, |_, _| Box::new(SimKv::new()), cfg)?;
        }
        self.log
            .lock()
            .expect("factory log")
            .started
            .push((shard_id, replica_id));
        Ok(())
    }
}

/// The client a host's [`ReportRounds`] is made with. The simulator
/// carries the reports itself (`ReportRounds::prepare`, the simulated RPC,
/// `ReportRounds::carry_out`: what `round` does around
/// `MasterClient::report`), so this client only gives the deployment id.
pub(super) struct SimClient;

impl MasterClient for SimClient {
    fn deployment_id(&self) -> Result<u64, MasterClientError> {
        Ok(DEPLOYMENT_ID)
    }

    fn report(&self, _report: &HostReport) -> Result<Vec<MasterRequest>, MasterClientError> {
        Err(MasterClientError(
            "the simulator carries reports itself".into(),
        ))
    }
}

/// A host's reporting and, when it runs a master replica, its ticker.
pub(super) struct HostReporter {
    rounds: ReportRounds,
    /// Host-clock tick of the next report.
    next_report: u64,
    /// Reports sent so far (numbers the answers).
    sent: u64,
    /// The report waiting for its answer, and the host-clock tick at which
    /// the host stops waiting (as `TcpMasterClient` times out): its number.
    waiting: Option<(u64, u64)>,
    ticker: Option<HostTicker>,
}

struct HostTicker {
    replica: ReplicaId,
    ticker: MasterTicker,
    pending: Option<RequestHandle<SmResult>>,
    next_tick: u64,
}

/// A report on its way to the master: (host, its incarnation, report
/// number, the report).
type Outgoing = (usize, u64, u64, HostReport);

/// A report proposed to the master shard for a host.
struct Rpc {
    from: usize,
    from_incarnation: u64,
    number: u64,
    server: usize,
    server_incarnation: u64,
    handle: RequestHandle<SmResult>,
}

/// An answer held back by the network.
struct HeldAnswer {
    due_round: u64,
    seq: u64,
    from: usize,
    to: usize,
    to_incarnation: u64,
    number: u64,
    requests: Vec<MasterRequest>,
}

/// The newest membership of a shard any running replica applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct View {
    cc: Index,
    voters: BTreeMap<ReplicaId, String>,
    non_votings: BTreeMap<ReplicaId, String>,
    witnesses: BTreeMap<ReplicaId, String>,
    removed: BTreeSet<ReplicaId>,
}

/// A membership change a host proposes for the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    AddNonVoting(ReplicaId),
    Promote(ReplicaId),
    Delete(ReplicaId),
}

impl Change {
    /// The change `req` asks for, with its shard and the config change id
    /// it is based on (`Index(0)`: unordered).
    fn of(req: &MasterRequest) -> Option<(ShardId, Change, Index)> {
        match req {
            MasterRequest::AddNonVoting {
                shard_id,
                replica_id,
                config_change_id,
                ..
            } => Some((
                *shard_id,
                Change::AddNonVoting(*replica_id),
                *config_change_id,
            )),
            MasterRequest::PromoteNonVoting {
                shard_id,
                replica_id,
                config_change_id,
            } => Some((*shard_id, Change::Promote(*replica_id), *config_change_id)),
            MasterRequest::DeleteReplica {
                shard_id,
                replica_id,
                config_change_id,
            } => Some((*shard_id, Change::Delete(*replica_id), *config_change_id)),
            _ => None,
        }
    }

    /// Whether the change took effect in membership `v` (or can no longer
    /// take effect: its replica was removed).
    fn took_effect(self, v: &View) -> bool {
        match self {
            Change::AddNonVoting(r) => {
                v.non_votings.contains_key(&r)
                    || v.voters.contains_key(&r)
                    || v.removed.contains(&r)
            }
            Change::Promote(r) => v.voters.contains_key(&r) || v.removed.contains(&r),
            Change::Delete(r) => v.removed.contains(&r),
        }
    }
}

/// Never two concurrent membership changes for one shard that could both
/// take effect: `new` (with the config change id it is based on) is
/// proposed while `others` of the same shard are in flight. Ordered
/// changes exclude each other: whichever is applied first changes the
/// membership's config change id, and every other one based on the old id
/// is rejected when applied (a request the master gave up on, still in
/// flight behind a partition, can no longer take effect after the next
/// change). Returns the first other change that could still take effect
/// beside `new`: different, not taken effect in `v`, and `new` or it
/// unordered.
fn concurrent_change(new: (Change, Index), others: &[(Change, Index)], v: &View) -> Option<Change> {
    others
        .iter()
        .find(|(o, base)| {
            *o != new.0 && !o.took_effect(v) && (new.1 == Index(0) || *base == Index(0))
        })
        .map(|(o, _)| *o)
}

/// Raft majority of `n` voters.
fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// The master's change of a shard's voters from `before` to `after` cost
/// the shard its live quorum: it had a quorum of live voters before and
/// has none after. `live` says whether a replica counts as live.
fn quorum_lost(
    before: &BTreeSet<ReplicaId>,
    after: &BTreeSet<ReplicaId>,
    live: impl Fn(ReplicaId) -> bool,
) -> bool {
    let lb = before.iter().filter(|r| live(**r)).count();
    let la = after.iter().filter(|r| live(**r)).count();
    !after.is_empty() && lb >= quorum(before.len()) && la < quorum(after.len())
}

/// A removed id reused: a member of `v` that an older membership (with a
/// smaller config-change index) listed as removed.
fn reused_id(
    removed_at: &BTreeMap<ReplicaId, Index>,
    cc: Index,
    members: impl Iterator<Item = ReplicaId>,
) -> Option<ReplicaId> {
    members
        .into_iter()
        .find(|r| removed_at.get(r).is_some_and(|at| *at < cc))
}

/// The master side of a simulation.
pub(super) struct MasterSim {
    pub(super) plan: MasterPlan,
    configs: Arc<BTreeMap<ShardId, Config>>,
    log: Arc<Mutex<FactoryLog>>,
    outbox: Vec<Outgoing>,
    rpcs: Vec<Rpc>,
    held: Vec<HeldAnswer>,
    held_seq: u64,
    /// Per shard, the newest membership any running replica applied.
    views: BTreeMap<ShardId, View>,
    /// Per shard, removed ids and the config-change index of the first
    /// membership seen listing them removed.
    removed_at: BTreeMap<ShardId, BTreeMap<ReplicaId, Index>>,
    /// Moves of the master already checked: (shard, new replica).
    moves_seen: BTreeSet<(u64, u64)>,
    /// The newest master state read (every tick, from the master replica
    /// that applied the most).
    pub(super) state: Option<MasterState>,
    /// The CreateShard proposal in flight during the set-up.
    create: Option<(usize, u64, RequestHandle<SmResult>)>,
    deaths_left: usize,
    /// Rounds at which the joiners (by host index) start.
    joins: Vec<(u64, usize)>,
    /// Statistics.
    pub(super) reports_delivered: u64,
    pub(super) answers_delivered: u64,
    pub(super) deaths: u64,
    pub(super) joined: u64,
}

impl MasterSim {
    pub(super) fn new(plan: MasterPlan, configs: BTreeMap<ShardId, Config>) -> MasterSim {
        MasterSim {
            deaths_left: plan.deaths,
            plan,
            configs: Arc::new(configs),
            log: Arc::new(Mutex::new(FactoryLog::default())),
            outbox: Vec::new(),
            rpcs: Vec::new(),
            held: Vec::new(),
            held_seq: 0,
            views: BTreeMap::new(),
            removed_at: BTreeMap::new(),
            moves_seen: BTreeSet::new(),
            state: None,
            create: None,
            joins: Vec::new(),
            reports_delivered: 0,
            answers_delivered: 0,
            deaths: 0,
            joined: 0,
        }
    }

    fn factory(&self) -> Arc<SimFactory> {
        Arc::new(SimFactory {
            configs: self.configs.clone(),
            master: self.plan.options.config.clone(),
            master_snapshot_entries: self.plan.master_snapshot_entries,
            log: self.log.clone(),
        })
    }

    /// The initial master members: replica `h + 1` on host `h`, h < 3.
    pub(super) fn initial_members(hosts: &[HostSlot]) -> BTreeMap<ReplicaId, String> {
        (0..3)
            .map(|h| (ReplicaId(h as u64 + 1), hosts[h].addr.clone()))
            .collect()
    }

    /// Starts the replicas of a host that just started on `nh`: every
    /// replica it holds data of, and (at its first start) its initial
    /// master replica. Then its reporter.
    pub(super) fn start_host_replicas(
        &self,
        h: usize,
        slot: &mut HostSlot,
        nh: &NodeHost,
        members: &BTreeMap<ReplicaId, String>,
    ) -> longship::Result<()> {
        let factory = self.factory();
        let mut held: Vec<(ShardId, ReplicaId)> = nh
            .get_node_host_info()
            .log_info
            .iter()
            .map(|l| (l.shard_id, l.replica_id))
            .collect();
        held.sort();
        held.dedup();
        use longship::ReplicaFactory;
        for (shard, replica) in &held {
            match factory.start_replica(nh, *shard, *replica, Start::Restart, false) {
                Ok(()) => {}
                // A removal that a crash interrupted (its tombstone is
                // durable): finish it, start nothing.
                Err(longship::Error::ReplicaDataRemoved { .. }) => {
                    nh.remove_data(*shard, *replica)?;
                }
                Err(e) => {
                    return Err(longship::Error::Rejected(format!(
                        "replica {replica} of {shard}: {e}"
                    )));
                }
            }
        }
        if h < 3 && !slot.master_bootstrapped {
            let me = ReplicaId(h as u64 + 1);
            if !held.iter().any(|(s, _)| *s == MASTER_SHARD_ID) {
                factory.start_replica(
                    nh,
                    MASTER_SHARD_ID,
                    me,
                    Start::New(members.clone()),
                    false,
                )?;
            }
        }
        slot.master_bootstrapped = true;
        // What a host restarts of its own is not the master's doing: only
        // starts of report rounds are checked.
        self.log.lock().expect("factory log").started.clear();
        let rounds = ReportRounds::new(
            nh,
            Arc::new(SimClient),
            factory,
            ReportingOptions {
                interval: std::time::Duration::from_millis(self.plan.report_ticks * RTT_MS),
                capacity: 1024,
                request_timeout: std::time::Duration::from_millis(30 * RTT_MS),
                metadata: String::new(),
            },
        )?;
        slot.reporter = Some(HostReporter {
            rounds,
            next_report: 1 + h as u64 % self.plan.report_ticks,
            sent: 0,
            waiting: None,
            ticker: None,
        });
        Ok(())
    }
}

/// The replicas host `slot` runs now, as the simulator's `hosted` map (the
/// clients pick hosts by it).
fn sync_hosted(slot: &mut HostSlot, configs: &BTreeMap<ShardId, Config>) {
    let Some(nh) = &slot.nh else {
        return;
    };
    let mut hosted = BTreeMap::new();
    for s in nh.get_node_host_info().shards {
        let Some(t) = configs.get(&s.shard_id) else {
            continue;
        };
        hosted.insert(
            s.shard_id,
            super::host::Hosted {
                cfg: Config {
                    replica_id: s.replica_id,
                    is_non_voting: s.is_non_voting,
                    ..t.clone()
                },
                initial: None,
            },
        );
    }
    slot.hosted = hosted;
}

impl Sim {
    fn master(&self) -> &MasterSim {
        self.master.as_ref().expect("master mode")
    }

    fn master_mut(&mut self) -> &mut MasterSim {
        self.master.as_mut().expect("master mode")
    }

    /// Master mode's set-up: the initial hosts start, the master elects a
    /// leader, the simulator asks it to create every shard, and waits until
    /// each has its replicas and a leader.
    pub(super) fn master_setup(&mut self) -> Result<(), String> {
        self.phase = Phase::Setup;
        for h in 0..self.master().plan.initial_hosts {
            self.hosts[h].gone = false;
            self.start_host(h)?;
        }
        // The joiners' rounds, spread over the fault phase.
        let fault_rounds = self.master().plan.fault_ticks_min * ROUNDS_PER_TICK;
        let mut joins = Vec::new();
        for h in self.master().plan.initial_hosts..self.hosts.len() {
            joins.push((self.rng.below(fault_rounds.max(1)), h));
        }
        self.master_mut().joins = joins;
        let deadline = self.ticks + SETUP_TICKS_MAX;
        loop {
            if self.setup_done() {
                break;
            }
            if self.ticks >= deadline {
                return Err(format!(
                    "master set-up (shards created on their hosts) not done within \
                     {SETUP_TICKS_MAX} ticks\n{}",
                    self.dump()
                ));
            }
            if self.round.is_multiple_of(ROUNDS_PER_TICK) {
                self.create_missing_shard();
            }
            self.step()?;
        }
        self.trace_event("setup-done", self.round, 0);
        self.phase = Phase::Faults;
        // The fault phase counts from here.
        self.fault_start_round = self.round;
        let start = self.round;
        for j in &mut self.master_mut().joins {
            j.0 += start;
        }
        Ok(())
    }

    fn setup_done(&self) -> bool {
        let Some(state) = &self.master().state else {
            return false;
        };
        state.ops.is_empty()
            && self
                .shards
                .iter()
                .all(|s| state.shards.contains_key(&s.id.0) && self.has_leader(s.id))
    }

    fn has_leader(&self, shard: ShardId) -> bool {
        self.hosts.iter().any(|slot| {
            slot.nh.as_ref().is_some_and(|nh| {
                nh.get_leader(shard)
                    .is_ok_and(|l| l.is_some_and(|l| l.replica_id == nh_replica(nh, shard)))
            })
        })
    }

    /// Proposes the creation of the first shard the master does not have.
    fn create_missing_shard(&mut self) {
        if let Some((h, inc, handle)) = self.master_mut().create.take() {
            let alive = self.hosts[h].incarnation == inc && self.hosts[h].nh.is_some();
            match handle.try_result() {
                None if alive => {
                    self.master_mut().create = Some((h, inc, handle));
                    return;
                }
                Some(r) => {
                    let v = r.as_ref().map(|r| r.value).unwrap_or(u64::MAX);
                    self.trace_event("create-done", h as u64, v);
                }
                None => {}
            }
        }
        let Some(state) = &self.master().state else {
            return;
        };
        let Some(missing) = self
            .shards
            .iter()
            .map(|s| s.id)
            .find(|s| !state.shards.contains_key(&s.0))
        else {
            return;
        };
        let Some(h) = self.master_server(None) else {
            return;
        };
        let nh = self.hosts[h].nh.as_ref().expect("server runs");
        let cmd = serde_json::to_vec(&Command::CreateShard {
            shard: missing.0,
            replicas: REPLICAS,
        })
        .expect("commands serialise");
        let session = Session::noop(MASTER_SHARD_ID);
        if let Ok(handle) = nh.propose(&session, cmd, self.timeout(RPC_TIMEOUT_TICKS)) {
            let inc = self.hosts[h].incarnation;
            self.master_mut().create = Some((h, inc, handle));
            self.trace_event("create-shard", missing.0, h as u64);
        }
    }

    /// A running host with a master replica that `from` can reach (any
    /// when `None`): the leader's first, else the lowest index.
    fn master_server(&self, from: Option<usize>) -> Option<usize> {
        let reachable = |s: usize| match from {
            None => true,
            Some(f) => {
                f == s
                    || !self
                        .net
                        .cut_links()
                        .contains(&(self.hosts[f].addr.clone(), self.hosts[s].addr.clone()))
            }
        };
        let servers: Vec<usize> = (0..self.hosts.len())
            .filter(|&s| {
                self.hosts[s]
                    .nh
                    .as_ref()
                    .is_some_and(|nh| nh.get_leader(MASTER_SHARD_ID).is_ok())
                    && reachable(s)
            })
            .collect();
        servers
            .iter()
            .copied()
            .find(|&s| {
                let nh = self.hosts[s].nh.as_ref().expect("filtered");
                nh.get_leader(MASTER_SHARD_ID).is_ok_and(|l| {
                    l.is_some_and(|l| l.replica_id == nh_replica(nh, MASTER_SHARD_ID))
                })
            })
            .or_else(|| servers.first().copied())
    }

    /// Master mode's part of a round: tickers, reports and their answers,
    /// and the checks.
    pub(super) fn master_round(&mut self) -> Result<(), String> {
        let configs = self.master().configs.clone();
        for slot in &mut self.hosts {
            sync_hosted(slot, &configs);
        }
        self.update_views()?;
        self.run_tickers();
        self.run_reporters()?;
        self.carry_reports();
        self.carry_answers()?;
        if self.round.is_multiple_of(ROUNDS_PER_TICK) {
            self.read_master_state()?;
        }
        let violations = std::mem::take(&mut self.master().log.lock().expect("log").violations);
        if let Some(v) = violations.first() {
            return Err(format!("a master replica panicked applying an entry: {v}"));
        }
        Ok(())
    }

    fn run_tickers(&mut self) {
        let tick_ticks = self.master().plan.tick_ticks;
        let options = self.master().plan.options.clone();
        for h in 0..self.hosts.len() {
            let slot = &mut self.hosts[h];
            let Some(nh) = &slot.nh else { continue };
            let Some(rep) = &mut slot.reporter else {
                continue;
            };
            // A master replica started here (by the factory) gets a ticker.
            let runs_master = nh.get_leader(MASTER_SHARD_ID).is_ok();
            if runs_master && rep.ticker.is_none() {
                let replica = nh_replica(nh, MASTER_SHARD_ID);
                rep.ticker = Some(HostTicker {
                    replica,
                    ticker: MasterTicker::new(replica, options.clone()),
                    pending: None,
                    next_tick: slot.local_ticks,
                });
            }
            let Some(t) = &mut rep.ticker else { continue };
            if runs_master && nh_replica(nh, MASTER_SHARD_ID) != t.replica {
                rep.ticker = None;
                continue;
            }
            if let Some(h) = &t.pending {
                match h.try_result() {
                    None => continue,
                    Some(outcome) => {
                        t.ticker.completed(&outcome);
                        t.pending = None;
                    }
                }
            }
            if slot.local_ticks < t.next_tick {
                continue;
            }
            t.next_tick = slot.local_ticks + tick_ticks;
            match t.ticker.next(nh, slot.local_ticks * RTT_MS) {
                Ok(p) => t.pending = p,
                Err(longship_master::TickerStopped) => rep.ticker = None,
            }
        }
    }

    /// Reports due on each host's clock: a host sends its next report once
    /// it has its previous one's answer (or stopped waiting for it).
    fn run_reporters(&mut self) -> Result<(), String> {
        for h in 0..self.hosts.len() {
            let report_ticks = self.master().plan.report_ticks;
            let slot = &mut self.hosts[h];
            let (Some(nh), Some(rep)) = (&slot.nh, &mut slot.reporter) else {
                continue;
            };
            let now = slot.local_ticks;
            if now < rep.next_report || rep.waiting.is_some_and(|(_, until)| now < until) {
                continue;
            }
            let report = match rep.rounds.prepare(nh) {
                Ok(r) => r,
                Err(e) => return Err(format!("host {h}'s report failed: {e}")),
            };
            rep.sent += 1;
            rep.waiting = Some((rep.sent, now + RPC_TIMEOUT_TICKS));
            rep.next_report = now + report_ticks;
            let out = (h, slot.incarnation, rep.sent, report);
            self.master_mut().outbox.push(out);
            self.trace_event("report-round", h as u64, now);
        }
        Ok(())
    }

    /// Host `h` carries out the answer to its report (`carry_out`, the
    /// second half of a reporter's round), and the checks of what it did:
    /// no replica started under an id removed before, no membership change
    /// proposed while another one of the shard is in flight.
    fn carry_out(&mut self, h: usize, requests: &[MasterRequest]) -> Result<(), String> {
        let before: Vec<MasterRequest> = match &self.hosts[h].reporter {
            Some(rep) => rep.rounds.in_flight().cloned().collect(),
            None => return Ok(()),
        };
        let result = {
            let slot = &mut self.hosts[h];
            let (Some(nh), Some(rep)) = (&slot.nh, &mut slot.reporter) else {
                return Ok(());
            };
            rep.waiting = None;
            rep.rounds.carry_out(nh, requests, &|| false)
        };
        if let Err(e) = result {
            return Err(format!("host {h} could not carry out its answer: {e}"));
        }
        // Replicas started by the answer.
        let started = std::mem::take(&mut self.master().log.lock().expect("log").started);
        for (shard, replica) in started {
            self.trace_event("master-start", shard.0, replica.0);
            let view_removed = self
                .master()
                .removed_at
                .get(&shard)
                .is_some_and(|m| m.contains_key(&replica));
            if view_removed && self.master_asked_start(shard, replica) {
                return Err(format!(
                    "the master asked host {h} to start replica {replica} of {shard}, \
                     an id removed before"
                ));
            }
        }
        let configs = self.master().configs.clone();
        sync_hosted(&mut self.hosts[h], &configs);
        // Membership changes proposed by this answer.
        let now: Vec<MasterRequest> = self.hosts[h]
            .reporter
            .as_ref()
            .map(|r| r.rounds.in_flight().cloned().collect())
            .unwrap_or_default();
        for req in now.iter().filter(|r| !before.contains(r)) {
            let Some((shard, change, base)) = Change::of(req) else {
                continue;
            };
            self.trace_event("proposed-change", shard.0, h as u64);
            if base == Index(0) {
                return Err(format!(
                    "the master asked host {h} for an unordered membership change of \
                     {shard}: {change:?}"
                ));
            }
            let others = self.changes_in_flight(shard, Some((h, req)));
            let view = self.master().views.get(&shard).cloned().unwrap_or_default();
            let changes: Vec<(Change, Index)> = others.iter().map(|(_, c, b)| (*c, *b)).collect();
            if let Some(other) = concurrent_change((change, base), &changes, &view) {
                let (oh, _, _) = others.iter().find(|(_, c, _)| *c == other).expect("found");
                return Err(format!(
                    "two concurrent membership changes of {shard}: host {h} ({}) proposes \
                     {change:?} while {other:?}, proposed through host {oh} ({}), is in \
                     flight and has not taken effect (membership {view:?})",
                    self.describe_replica(h, shard),
                    self.describe_replica(*oh, shard),
                ));
            }
        }
        Ok(())
    }

    /// Whether the master (its newest state) still has an operation that
    /// starts `replica` of `shard`: a start of a removed id it did not ask
    /// for (an old answer, held back) is not its doing, and harmless.
    fn master_asked_start(&self, shard: ShardId, replica: ReplicaId) -> bool {
        let Some(state) = &self.master().state else {
            return false;
        };
        match state.ops.get(&shard.0).map(|o| &o.op) {
            Some(Op::Move { add, phase, .. }) => {
                *add == replica.0
                    && matches!(
                        phase,
                        longship_master::model::Phase::AddLearner
                            | longship_master::model::Phase::CatchUp
                            | longship_master::model::Phase::Promote
                    )
            }
            Some(Op::Create { members }) => members.contains_key(&replica.0),
            _ => false,
        }
    }

    /// The membership changes of `shard` in flight on every host, but for
    /// `except` (a host and the request it just proposed): proposed there
    /// and not completed, on a host whose replica still has a change
    /// pending in a term at least the proposer's (a deposed leader's
    /// uncommitted change can no longer take effect).
    /// Host `h`'s replica of `shard` as its NodeHost reports it: term,
    /// leader, applied index, whether a change is pending.
    fn describe_replica(&self, h: usize, shard: ShardId) -> String {
        let info = self.hosts[h].nh.as_ref().and_then(|nh| {
            nh.get_node_host_info()
                .shards
                .into_iter()
                .find(|s| s.shard_id == shard)
        });
        match info {
            Some(s) => format!(
                "term {}, leader {}, applied {}, pending change {}",
                s.term.0, s.leader_id.0, s.applied.0, s.pending_config_change
            ),
            None => "no replica running".into(),
        }
    }

    /// Membership changes of `shard` that hosts proposed at the master's
    /// request and that may still take effect, with the proposing host.
    fn changes_in_flight(
        &self,
        shard: ShardId,
        except: Option<(usize, &MasterRequest)>,
    ) -> Vec<(usize, Change, Index)> {
        let info = |h: usize| {
            self.hosts[h].nh.as_ref().and_then(|nh| {
                nh.get_node_host_info()
                    .shards
                    .into_iter()
                    .find(|s| s.shard_id == shard)
            })
        };
        let min_term = except
            .and_then(|(h, _)| info(h))
            .map_or(longship::Term(0), |s| s.term);
        let mut out = Vec::new();
        for (h, slot) in self.hosts.iter().enumerate() {
            let Some(rep) = &slot.reporter else { continue };
            if !info(h).is_some_and(|s| s.pending_config_change && s.term >= min_term) {
                continue;
            }
            for req in rep.rounds.in_flight() {
                if except.is_some_and(|(eh, er)| eh == h && er == req) {
                    continue;
                }
                if let Some((s, c, base)) = Change::of(req)
                    && s == shard
                {
                    out.push((h, c, base));
                }
            }
        }
        out
    }

    /// Takes the reports hosts sent and proposes them to the master over
    /// the simulated links.
    fn carry_reports(&mut self) {
        let timeout = self.timeout(RPC_TIMEOUT_TICKS);
        let outbox = std::mem::take(&mut self.master_mut().outbox);
        for (h, incarnation, number, report) in outbox {
            if self.hosts[h].incarnation != incarnation || self.hosts[h].nh.is_none() {
                continue;
            }
            let faults = self.net.faults;
            if faults.drop > 0.0 && self.rng.chance(faults.drop) {
                self.trace_event("report-dropped", h as u64, 0);
                continue;
            }
            let Some(server) = self.master_server(Some(h)) else {
                self.trace_event("report-unreachable", h as u64, 0);
                continue;
            };
            let copies = if faults.duplicate > 0.0 && self.rng.chance(faults.duplicate) {
                2
            } else {
                1
            };
            let cmd = serde_json::to_vec(&Command::Report(report_from(&report)))
                .expect("commands serialise");
            for _ in 0..copies {
                let nh = self.hosts[server].nh.as_ref().expect("server runs");
                let session = Session::noop(MASTER_SHARD_ID);
                if let Ok(handle) = nh.propose(&session, cmd.clone(), timeout) {
                    let rpc = Rpc {
                        from: h,
                        from_incarnation: incarnation,
                        number,
                        server,
                        server_incarnation: self.hosts[server].incarnation,
                        handle,
                    };
                    self.master_mut().rpcs.push(rpc);
                    self.master_mut().reports_delivered += 1;
                    self.trace_event("report", h as u64, server as u64);
                }
            }
        }
    }

    /// Carries the answers of applied reports back (through the links'
    /// faults) to the hosts, which carry them out.
    fn carry_answers(&mut self) -> Result<(), String> {
        let rpcs = std::mem::take(&mut self.master_mut().rpcs);
        let mut keep = Vec::new();
        for rpc in rpcs {
            let server_same = self.hosts[rpc.server].incarnation == rpc.server_incarnation
                && self.hosts[rpc.server].nh.is_some();
            let outcome = rpc.handle.try_result();
            let Some(outcome) = outcome else {
                if server_same {
                    keep.push(rpc);
                }
                continue;
            };
            let Ok(result) = outcome else { continue };
            if result.value != RESULT_OK {
                continue;
            }
            let Ok(requests) = serde_json::from_slice::<Vec<Request>>(&result.data) else {
                continue;
            };
            let requests: Vec<MasterRequest> = requests.iter().map(to_master_request).collect();
            let faults = self.net.faults;
            let cut = self.net.cut_links().contains(&(
                self.hosts[rpc.server].addr.clone(),
                self.hosts[rpc.from].addr.clone(),
            ));
            if (cut && rpc.server != rpc.from)
                || (faults.drop > 0.0 && self.rng.chance(faults.drop))
            {
                self.trace_event("answer-lost", rpc.from as u64, 0);
                continue;
            }
            let delay = if faults.delay > 0.0 && self.rng.chance(faults.delay) {
                1 + self.rng.below(faults.delay_rounds_max.max(1) * 4)
            } else {
                0
            };
            let due_round = self.round + delay;
            let m = self.master_mut();
            m.held_seq += 1;
            let seq = m.held_seq;
            m.held.push(HeldAnswer {
                due_round,
                seq,
                from: rpc.server,
                to: rpc.from,
                to_incarnation: rpc.from_incarnation,
                number: rpc.number,
                requests,
            });
        }
        self.master_mut().rpcs = keep;
        let round = self.round;
        let held = std::mem::take(&mut self.master_mut().held);
        let (mut due, later): (Vec<HeldAnswer>, Vec<HeldAnswer>) =
            held.into_iter().partition(|a| a.due_round <= round);
        self.master_mut().held = later;
        due.sort_by_key(|a| (a.due_round, a.seq));
        for a in due {
            let slot = &self.hosts[a.to];
            // Only the answer the host waits for (a duplicate, or one that
            // comes after the host stopped waiting, is not read).
            let waited = slot.incarnation == a.to_incarnation
                && slot.nh.is_some()
                && slot
                    .reporter
                    .as_ref()
                    .is_some_and(|r| r.waiting.is_some_and(|(n, _)| n == a.number));
            if !waited {
                continue;
            }
            if self.log && !a.requests.is_empty() {
                eprintln!(
                    "[round {} tick {}] answer to host {}: {:?}",
                    self.round, self.ticks, a.to, a.requests
                );
            }
            self.master_mut().answers_delivered += 1;
            self.trace_event("answer", a.to as u64, a.from as u64);
            self.carry_out(a.to, &a.requests)?;
        }
        Ok(())
    }

    /// Whether replica `replica` of `shard` at `addr` counts as live for
    /// the quorum check: its host runs it, or went down (or died) too
    /// recently for a master to know ([`MasterPlan::grace_ticks`]).
    fn replica_live(&self, shard: ShardId, replica: ReplicaId, addr: &str) -> bool {
        let Some(slot) = self.hosts.iter().find(|s| s.addr == addr) else {
            return false;
        };
        match &slot.nh {
            Some(_) => {
                slot.hosted
                    .get(&shard)
                    .is_some_and(|x| x.cfg.replica_id == replica)
                    || (shard == MASTER_SHARD_ID
                        && slot
                            .nh
                            .as_ref()
                            .is_some_and(|nh| nh_replica(nh, shard) == replica))
            }
            None => slot
                .down_since_tick
                .is_some_and(|t| self.ticks < t + self.master().plan.grace_ticks()),
        }
    }

    /// The newest membership of every shard, and the checks on how it
    /// changed: removed ids never come back, the quorum is never lost by
    /// a change.
    fn update_views(&mut self) -> Result<(), String> {
        let mut newest: BTreeMap<ShardId, View> = BTreeMap::new();
        let mut all: Vec<(usize, ShardId, View)> = Vec::new();
        for (h, slot) in self.hosts.iter().enumerate() {
            let Some(nh) = &slot.nh else { continue };
            for s in nh.get_node_host_info().shards {
                if s.failed {
                    continue;
                }
                let m = &s.membership;
                let v = View {
                    cc: m.config_change_id,
                    voters: m.voters.clone(),
                    non_votings: m.non_votings.clone(),
                    witnesses: m.witnesses.clone(),
                    removed: m.removed.clone(),
                };
                let e = newest.entry(s.shard_id).or_default();
                if v.cc >= e.cc && (v.cc > e.cc || e.voters.is_empty()) {
                    *e = v.clone();
                }
                all.push((h, s.shard_id, v));
            }
        }
        for (h, shard, v) in &all {
            let removed_at = self.master().removed_at.get(shard);
            if let Some(r) = removed_at.and_then(|ra| {
                reused_id(
                    ra,
                    v.cc,
                    v.voters
                        .keys()
                        .chain(v.non_votings.keys())
                        .chain(v.witnesses.keys())
                        .copied(),
                )
            }) {
                return Err(format!(
                    "replica id {r} of {shard} reused: a member in the membership of index {} \
                     (seen on host {h}) after a membership listed it removed",
                    v.cc
                ));
            }
        }
        for (_, shard, v) in &all {
            let ra = self.master_mut().removed_at.entry(*shard).or_default();
            for r in &v.removed {
                let at = ra.entry(*r).or_insert(v.cc);
                *at = (*at).min(v.cc);
            }
        }
        for (shard, v) in newest {
            let old = self.master().views.get(&shard).cloned();
            if let Some(old) = old
                && v.cc > old.cc
            {
                let before: BTreeSet<ReplicaId> = old.voters.keys().copied().collect();
                let after: BTreeSet<ReplicaId> = v.voters.keys().copied().collect();
                let addr = |r: &ReplicaId| {
                    v.voters
                        .get(r)
                        .or_else(|| old.voters.get(r))
                        .cloned()
                        .unwrap_or_default()
                };
                if quorum_lost(&before, &after, |r| self.replica_live(shard, r, &addr(&r))) {
                    let live: Vec<String> = before
                        .union(&after)
                        .map(|r| format!("{r}:{}", self.replica_live(shard, *r, &addr(r))))
                        .collect();
                    return Err(format!(
                        "a membership change of {shard} cost its live quorum: voters \
                         {before:?} -> {after:?} (index {} -> {}), live {live:?}",
                        old.cc, v.cc
                    ));
                }
                self.trace_event("membership", shard.0, v.cc.0);
            }
            let keep = match self.master().views.get(&shard) {
                Some(old) => v.cc >= old.cc,
                None => true,
            };
            if keep {
                self.master_mut().views.insert(shard, v);
            }
        }
        Ok(())
    }

    /// Reads the master's state from the master replica that applied the
    /// most, and checks it.
    fn read_master_state(&mut self) -> Result<(), String> {
        let mut best: Option<(Index, usize)> = None;
        for (h, slot) in self.hosts.iter().enumerate() {
            let Some(nh) = &slot.nh else { continue };
            if let Some(s) = nh
                .get_node_host_info()
                .shards
                .into_iter()
                .find(|s| s.shard_id == MASTER_SHARD_ID && !s.failed)
                && best.is_none_or(|(a, _)| s.applied > a)
            {
                best = Some((s.applied, h));
            }
        }
        let Some((_, h)) = best else { return Ok(()) };
        let nh = self.hosts[h].nh.as_ref().expect("found");
        let Ok(bytes) = nh.stale_read(MASTER_SHARD_ID, b"state") else {
            return Ok(());
        };
        let state: MasterState =
            serde_json::from_slice(&bytes).map_err(|e| format!("master state: {e}"))?;
        for (shard, rec) in &state.shards {
            if let Some(r) = rec.placement.keys().find(|r| rec.removed.contains(r)) {
                return Err(format!(
                    "the master placed replica {r} of shard {shard}, which it removed"
                ));
            }
            let max = rec
                .placement
                .keys()
                .chain(rec.removed.iter())
                .max()
                .copied()
                .unwrap_or(0);
            if rec.next_replica_id <= max {
                return Err(format!(
                    "shard {shard}: the master's next replica id {} is not above {max}",
                    rec.next_replica_id
                ));
            }
        }
        for (shard, op) in &state.ops {
            if !state.shards.contains_key(shard) {
                return Err(format!("an operation on unknown shard {shard}"));
            }
            if let Op::Move { add, .. } = &op.op
                && self.master_mut().moves_seen.insert((*shard, *add))
            {
                self.trace_event("master-move", *shard, *add);
                let removed = self
                    .master()
                    .removed_at
                    .get(&ShardId(*shard))
                    .is_some_and(|m| m.contains_key(&ReplicaId(*add)));
                if removed {
                    return Err(format!(
                        "the master adds replica {add} to shard {shard}, an id removed before"
                    ));
                }
            }
        }
        if self.log && std::env::var_os("LONGSHIP_SIM_MASTER_TIME").is_some() {
            eprintln!(
                "[round {} tick {}] master time {} leader since {}",
                self.round, self.ticks, state.now_ms, state.leader_since_ms
            );
        }
        if self.log {
            let old = self.master().state.as_ref();
            for (shard, op) in &state.ops {
                if old.and_then(|o| o.ops.get(shard)) != Some(op) {
                    eprintln!(
                        "[round {} tick {}] master op on {shard}: {:?}",
                        self.round, self.ticks, op.op
                    );
                }
            }
            if let Some(old) = old {
                for shard in old.ops.keys().filter(|s| !state.ops.contains_key(s)) {
                    eprintln!(
                        "[round {} tick {}] master op on {shard} over; removed {:?}",
                        self.round, self.ticks, state.shards[shard].removed
                    );
                }
                for (h, r) in &state.hosts {
                    if old.hosts.get(h).is_some_and(|o| o.dead != r.dead) {
                        eprintln!(
                            "[round {} tick {}] master: {h} dead {}",
                            self.round, self.ticks, r.dead
                        );
                    }
                }
            }
        }
        self.master_mut().state = Some(state);
        Ok(())
    }

    /// Master-mode faults of a round: a host dies for good (only while
    /// every shard has all its replicas on running hosts, so that no shard
    /// loses two at once), a new host joins.
    pub(super) fn master_faults(&mut self) -> Result<(), String> {
        let round = self.round;
        let due: Vec<usize> = self
            .master()
            .joins
            .iter()
            .filter(|(r, _)| *r <= round)
            .map(|(_, h)| *h)
            .collect();
        for h in due {
            self.join_host(h)?;
        }
        if self.master().deaths_left > 0 && self.rng.chance(1.0 / 400.0) && self.all_replicated() {
            let alive: Vec<usize> = (0..self.hosts.len())
                .filter(|&h| !self.hosts[h].gone)
                .collect();
            let up: Vec<usize> = alive
                .iter()
                .copied()
                .filter(|&h| self.hosts[h].nh.is_some())
                .collect();
            if alive.len() > 4 && !up.is_empty() {
                let h = up[self.rng.below(up.len() as u64) as usize];
                self.kill_for_good(h)?;
            }
        }
        Ok(())
    }

    /// Starts joiner `h` (once).
    pub(super) fn join_host(&mut self, h: usize) -> Result<(), String> {
        self.master_mut().joins.retain(|(_, j)| *j != h);
        if !self.hosts[h].gone || self.hosts[h].dead {
            return Ok(());
        }
        self.hosts[h].gone = false;
        self.master_mut().joined += 1;
        self.trace_event("join", h as u64, 0);
        self.start_host(h)
    }

    fn kill_for_good(&mut self, h: usize) -> Result<(), String> {
        self.crash_host(h, 1)?;
        let slot = &mut self.hosts[h];
        slot.restart_at = None;
        slot.gone = true;
        slot.dead = true;
        slot.reporter = None;
        self.master_mut().deaths_left -= 1;
        self.master_mut().deaths += 1;
        self.trace_event("death", h as u64, 0);
        Ok(())
    }

    /// Whether every shard's newest membership has its replica count of
    /// voters, all on running hosts, and nothing else.
    fn all_replicated(&self) -> bool {
        let shards = self.shards.iter().map(|s| s.id).chain([MASTER_SHARD_ID]);
        shards.into_iter().all(|shard| {
            self.master().views.get(&shard).is_some_and(|v| {
                v.voters.len() == REPLICAS as usize
                    && v.non_votings.is_empty()
                    && v.voters.iter().all(|(r, a)| {
                        self.hosts.iter().any(|s| {
                            s.addr == *a
                                && s.nh.as_ref().is_some_and(|nh| nh_replica(nh, shard) == *r)
                        })
                    })
            })
        })
    }

    /// At the end of the fault phase: joiners that have not joined yet do.
    pub(super) fn master_heal(&mut self) -> Result<(), String> {
        let joins: Vec<usize> = self.master().joins.iter().map(|(_, h)| *h).collect();
        for h in joins {
            self.join_host(h)?;
        }
        Ok(())
    }

    /// Why the master has not brought every shard back yet (see the module
    /// doc), or `None`.
    pub(super) fn master_divergence(&self) -> Option<String> {
        let Some(state) = &self.master().state else {
            return Some("no master state read".into());
        };
        if !state.ops.is_empty() {
            let ops: Vec<String> = state
                .ops
                .iter()
                .map(|(s, o)| format!("{s}: {:?}", o.op))
                .collect();
            return Some(format!("master operations in flight: {}", ops.join("; ")));
        }
        for slot in self.hosts.iter().filter(|s| s.dead) {
            if state.hosts.get(&slot.addr).is_some_and(|h| !h.dead) {
                return Some(format!("{} died and is not declared dead", slot.addr));
            }
        }
        let shards: Vec<ShardId> = self
            .shards
            .iter()
            .map(|s| s.id)
            .chain([MASTER_SHARD_ID])
            .collect();
        for shard in shards {
            let Some(rec) = state.shards.get(&shard.0) else {
                return Some(format!("the master does not manage {shard}"));
            };
            // The leader's membership.
            let mut leader: Option<(longship::Term, longship::MembershipInfo)> = None;
            for slot in &self.hosts {
                let Some(nh) = &slot.nh else { continue };
                if let Some(s) = nh
                    .get_node_host_info()
                    .shards
                    .into_iter()
                    .find(|s| s.shard_id == shard && s.is_leader)
                    && leader.as_ref().is_none_or(|(t, _)| s.term > *t)
                {
                    leader = Some((s.term, s.membership.clone()));
                }
            }
            let Some((_, m)) = leader else {
                return Some(format!("{shard} has no leader"));
            };
            if m.voters.len() != rec.desired as usize
                || !m.non_votings.is_empty()
                || !m.witnesses.is_empty()
            {
                return Some(format!(
                    "{shard}: voters {:?}, non-voting {:?} (want {} voters)",
                    m.voters.keys().collect::<Vec<_>>(),
                    m.non_votings.keys().collect::<Vec<_>>(),
                    rec.desired
                ));
            }
            let placed: BTreeMap<ReplicaId, String> = rec
                .placement
                .iter()
                .map(|(r, h)| (ReplicaId(*r), h.clone()))
                .collect();
            if placed != m.voters {
                return Some(format!(
                    "{shard}: the master placed {placed:?}, the voters are {:?}",
                    m.voters
                ));
            }
            let mut seen: Option<(Index, u64)> = None;
            for (r, addr) in &m.voters {
                let Some(slot) = self.hosts.iter().find(|s| s.addr == *addr) else {
                    return Some(format!("{shard}: voter {r} on unknown host {addr}"));
                };
                if slot.gone {
                    return Some(format!("{shard}: voter {r} on {addr}, which is gone"));
                }
                let Some(nh) = &slot.nh else {
                    return Some(format!("{shard}: voter {r} on {addr}, which is down"));
                };
                let Some(s) = nh
                    .get_node_host_info()
                    .shards
                    .into_iter()
                    .find(|s| s.shard_id == shard && s.replica_id == *r)
                else {
                    return Some(format!("{shard}: voter {r} does not run on {addr}"));
                };
                let Some(d) = state_digest(nh, shard, s.applied) else {
                    return Some(format!("{shard}: no digest from voter {r}"));
                };
                match seen {
                    None => seen = Some((s.applied, d)),
                    Some(x) if x != (s.applied, d) => {
                        return Some(format!(
                            "{shard}: voter {r} applied {} ({d:016x}), another {} ({:016x})",
                            s.applied, x.0, x.1
                        ));
                    }
                    Some(_) => {}
                }
            }
            // No replica of the shard outside the membership runs or
            // keeps data anywhere.
            for slot in &self.hosts {
                let Some(nh) = &slot.nh else { continue };
                let info = nh.get_node_host_info();
                let held = info
                    .shards
                    .iter()
                    .map(|s| (s.shard_id, s.replica_id))
                    .chain(info.log_info.iter().map(|l| (l.shard_id, l.replica_id)));
                for (s, r) in held {
                    if s == shard && !m.voters.contains_key(&r) {
                        return Some(format!(
                            "{shard}: {} still holds replica {r}, not a member",
                            slot.addr
                        ));
                    }
                }
            }
        }
        let load = longship_master::decide::loads(state);
        if let (Some(max), Some(min)) = (load.values().max(), load.values().min())
            && max - min > 1
        {
            return Some(format!("replicas per host out of balance: {load:?}"));
        }
        None
    }

    /// The fingerprint of a master replica's state for the safety check:
    /// its JSON's hash (every replica applies the same entries, so equal
    /// indexes must give equal states).
    pub(super) fn master_digest(nh: &NodeHost, applied: Index) -> Option<Digest> {
        let bytes = nh.stale_read(MASTER_SHARD_ID, b"state").ok()?;
        let mut f = Fnv::default();
        f.write(&bytes);
        Some(Digest {
            index: applied.0,
            hash: f.0,
            error: None,
        })
    }
}

/// The local replica id of `shard` on `nh` (`ReplicaId(0)` when none).
fn nh_replica(nh: &NodeHost, shard: ShardId) -> ReplicaId {
    nh.get_node_host_info()
        .shards
        .into_iter()
        .find(|s| s.shard_id == shard)
        .map_or(ReplicaId(0), |s| s.replica_id)
}

/// A replica's state fingerprint (the kv digest's hash, or the master
/// state's JSON hash).
fn state_digest(nh: &NodeHost, shard: ShardId, applied: Index) -> Option<u64> {
    if shard == MASTER_SHARD_ID {
        return Sim::master_digest(nh, applied).map(|d| d.hash);
    }
    nh.stale_read(shard, DIGEST_QUERY)
        .ok()
        .and_then(|b| Digest::decode(&b))
        .map(|d| d.hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<ReplicaId> {
        v.iter().map(|r| ReplicaId(*r)).collect()
    }

    #[test]
    fn quorum_check_flags_a_change_that_costs_the_live_quorum() {
        // 1 is down for long: promoting 4 whose host is down too leaves
        // two live voters of four.
        let live = |r: ReplicaId| r.0 == 2 || r.0 == 3;
        assert!(quorum_lost(&ids(&[1, 2, 3]), &ids(&[1, 2, 3, 4]), live));
        // Removing a live voter of three with one down leaves one of two.
        assert!(quorum_lost(&ids(&[1, 2, 3]), &ids(&[1, 2]), live));
        // Removing the dead one is fine, as is promoting a live replica.
        assert!(!quorum_lost(&ids(&[1, 2, 3]), &ids(&[2, 3]), live));
        let live4 = |r: ReplicaId| r.0 != 1;
        assert!(!quorum_lost(&ids(&[1, 2, 3]), &ids(&[1, 2, 3, 4]), live4));
        // Without a live quorum before, the change is not the cause.
        let only2 = |r: ReplicaId| r.0 == 2;
        assert!(!quorum_lost(&ids(&[1, 2, 3]), &ids(&[1, 2]), only2));
    }

    #[test]
    fn concurrency_check_flags_a_different_change_not_yet_in_effect() {
        let mut v = View::default();
        v.voters.insert(ReplicaId(1), "a".into());
        let unordered = |c| (c, Index(0));
        let add4 = Change::AddNonVoting(ReplicaId(4));
        let add5 = Change::AddNonVoting(ReplicaId(5));
        // The same change again is a repeat, not a second change.
        assert_eq!(
            concurrent_change(unordered(add4), &[unordered(add4)], &v),
            None
        );
        assert_eq!(
            concurrent_change(unordered(add5), &[unordered(add4)], &v),
            Some(add4)
        );
        // Ordered on the same membership, at most one can take effect.
        assert_eq!(
            concurrent_change((add5, Index(7)), &[(add4, Index(7))], &v),
            None
        );
        // One of the two unordered: both could.
        assert_eq!(
            concurrent_change((add5, Index(7)), &[unordered(add4)], &v),
            Some(add4)
        );
        assert_eq!(
            concurrent_change(unordered(add5), &[(add4, Index(7))], &v),
            Some(add4)
        );
        // Once 4 is a member (or removed) the earlier change is over.
        v.non_votings.insert(ReplicaId(4), "b".into());
        assert_eq!(
            concurrent_change(unordered(add5), &[unordered(add4)], &v),
            None
        );
        let del1 = Change::Delete(ReplicaId(1));
        assert_eq!(
            concurrent_change(unordered(add5), &[unordered(del1)], &v),
            Some(del1)
        );
        v.removed.insert(ReplicaId(1));
        assert_eq!(
            concurrent_change(unordered(add5), &[unordered(del1)], &v),
            None
        );
    }

    #[test]
    fn reuse_check_flags_a_removed_id_back_as_a_member() {
        let removed: BTreeMap<ReplicaId, Index> = [(ReplicaId(2), Index(10))].into();
        let members = || [ReplicaId(1), ReplicaId(2)].into_iter();
        assert_eq!(
            reused_id(&removed, Index(12), members()),
            Some(ReplicaId(2))
        );
        // An older membership (before the removal) lists it, rightly.
        assert_eq!(reused_id(&removed, Index(8), members()), None);
        assert_eq!(
            reused_id(&removed, Index(12), [ReplicaId(3)].into_iter()),
            None
        );
    }
}
