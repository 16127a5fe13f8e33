//! The master's decisions against a model cluster: hosts that run
//! replicas, shards with a membership and a leader, requests carried out
//! at once. The master state machine is driven exactly as the master shard
//! drives it (reports and ticks through `apply_command`); the model checks
//! every request against the truth: no membership change that costs a
//! live quorum, no replica id reused, no data deleted of a member, and at
//! most one operation in flight per shard. Then it requires convergence:
//! every shard back to its replica count on live hosts, replicas per host
//! within one of the mean.

use std::collections::{BTreeMap, BTreeSet};

use longship_master::decide::{leader_counts, loads, quorum};
use longship_master::model::{
    Command, MasterConfig, MasterState, Membership, Op, Phase, ReplicaState, Report, Request,
    StartKind,
};
use longship_master::sm::{RESULT_OK, apply_command};
use proptest::prelude::*;

const TICK_MS: u64 = 100;
const DEAD_AFTER_MS: u64 = 1_000;

fn host(i: usize) -> String {
    format!("10.0.0.{i}:7000")
}

#[derive(Default, Clone, Debug)]
struct Shard {
    voters: BTreeMap<u64, String>,
    non_votings: BTreeMap<u64, String>,
    removed: BTreeSet<u64>,
    leader: Option<u64>,
    term: u64,
    applied: u64,
}

#[derive(Default, Clone, Debug)]
struct Host {
    alive: bool,
    /// shard → (replica, applied)
    replicas: BTreeMap<u64, (u64, u64)>,
    /// Data of stopped replicas: (shard, replica).
    stored: BTreeSet<(u64, u64)>,
}

struct World {
    master: MasterState,
    hosts: BTreeMap<String, Host>,
    shards: BTreeMap<u64, Shard>,
    /// (shard, replica) → the host it was ever started on.
    started: BTreeMap<(u64, u64), String>,
    now_ms: u64,
    last_death_ms: Option<u64>,
    changes: u64,
    /// Every command applied to `master`, in order.
    log: Vec<Command>,
}

impl World {
    fn new(n_hosts: usize, config: MasterConfig) -> World {
        let mut w = World {
            master: MasterState::new(config),
            hosts: BTreeMap::new(),
            shards: BTreeMap::new(),
            started: BTreeMap::new(),
            now_ms: 0,
            last_death_ms: None,
            changes: 0,
            log: Vec::new(),
        };
        for i in 1..=n_hosts {
            w.add_host(i);
        }
        w
    }

    fn add_host(&mut self, i: usize) {
        self.hosts.insert(
            host(i),
            Host {
                alive: true,
                ..Host::default()
            },
        );
    }

    fn kill(&mut self, i: usize) {
        self.hosts.get_mut(&host(i)).unwrap().alive = false;
        self.last_death_ms = Some(self.now_ms);
    }

    fn alive(&self, h: &str) -> bool {
        self.hosts.get(h).is_some_and(|h| h.alive)
    }

    fn runs(&self, h: &str, shard: u64, replica: u64) -> bool {
        self.hosts
            .get(h)
            .is_some_and(|x| x.alive && x.replicas.get(&shard).is_some_and(|(r, _)| *r == replica))
    }

    fn live_voters(&self, shard: u64, voters: &BTreeMap<u64, String>) -> usize {
        voters
            .iter()
            .filter(|(r, h)| self.runs(h, shard, **r))
            .count()
    }

    fn create(&mut self, shard: u64, replicas: u32) {
        let cmd = Command::CreateShard { shard, replicas };
        self.log.push(cmd.clone());
        let (v, data) = apply_command(&mut self.master, cmd);
        assert_eq!(v, RESULT_OK, "{}", String::from_utf8_lossy(&data));
    }

    fn report(&self, h: &str) -> Report {
        let x = &self.hosts[h];
        Report {
            host: h.to_string(),
            deployment_id: self.master.config.deployment_id,
            capacity: 100,
            replicas: x
                .replicas
                .iter()
                .map(|(&shard, &(replica, applied))| {
                    let s = self.shards.get(&shard);
                    let leader = s.is_some_and(|s| s.leader == Some(replica));
                    ReplicaState {
                        shard,
                        replica,
                        leader,
                        term: s.map_or(0, |s| s.term),
                        leader_id: s.and_then(|s| s.leader).unwrap_or(0),
                        applied,
                        log_entries: 10,
                        membership: s.filter(|_| leader).map(|s| Membership {
                            config_change_id: 0,
                            voters: s.voters.clone(),
                            non_votings: s.non_votings.clone(),
                        }),
                        failed: false,
                        pending_change: false,
                    }
                })
                .collect(),
            stored: x.stored.iter().copied().collect(),
            metadata: String::new(),
        }
    }

    /// Whether a loss of quorum now could be one the master could not see
    /// (a host died less than `dead_after` ago).
    fn recent_death(&self) -> bool {
        self.last_death_ms
            .is_some_and(|t| self.now_ms <= t + DEAD_AFTER_MS + 2 * TICK_MS)
    }

    /// Asserts that a membership change from `before` to `after` keeps a
    /// live quorum (unless a death the master could not know of yet).
    fn check_change(&self, shard: u64, before: &Shard, after: &Shard) {
        let live_before = self.live_voters(shard, &before.voters);
        let live_after = self.live_voters(shard, &after.voters);
        if self.recent_death() {
            return;
        }
        assert!(
            live_before >= quorum(before.voters.len()),
            "shard {shard}: a change was made without a live quorum"
        );
        assert!(
            live_after >= quorum(after.voters.len()),
            "shard {shard}: change {:?} -> {:?} drops below a live quorum",
            before.voters,
            after.voters
        );
    }

    fn leader_host(&self, shard: u64) -> Option<String> {
        let s = self.shards.get(&shard)?;
        let l = s.leader?;
        s.voters.get(&l).cloned().filter(|h| self.runs(h, shard, l))
    }

    fn execute(&mut self, h: &str, req: &Request) {
        match req {
            Request::StartReplica {
                shard,
                replica,
                start,
                ..
            } => {
                let prev = self.started.insert((*shard, *replica), h.to_string());
                assert!(
                    prev.as_deref().is_none_or(|p| p == h),
                    "replica {replica} of shard {shard} started on two hosts"
                );
                if let Some(s) = self.shards.get(shard) {
                    assert!(!s.removed.contains(replica), "a removed replica restarted");
                }
                let x = self.hosts.get_mut(h).unwrap();
                if x.replicas.contains_key(shard) {
                    return;
                }
                x.replicas.insert(*shard, (*replica, 0));
                if let StartKind::New(members) = start {
                    self.shards.entry(*shard).or_insert_with(|| Shard {
                        voters: members.clone(),
                        ..Shard::default()
                    });
                }
            }
            Request::AddNonVoting {
                shard,
                replica,
                host: to,
                ..
            } => {
                if self.leader_host(*shard).as_deref() != Some(h) {
                    return;
                }
                let s = self.shards.get_mut(shard).unwrap();
                assert!(!s.removed.contains(replica), "removed replica id reused");
                if !s.voters.contains_key(replica) {
                    s.non_votings.insert(*replica, to.clone());
                    self.changes += 1;
                }
            }
            Request::Promote { shard, replica, .. } => {
                if self.leader_host(*shard).as_deref() != Some(h) {
                    return;
                }
                let before = self.shards[shard].clone();
                let mut after = before.clone();
                if let Some(a) = after.non_votings.remove(replica) {
                    after.voters.insert(*replica, a);
                    self.check_change(*shard, &before, &after);
                    self.shards.insert(*shard, after);
                    self.changes += 1;
                }
            }
            Request::Delete { shard, replica, .. } => {
                if self.leader_host(*shard).as_deref() != Some(h) {
                    return;
                }
                let before = self.shards[shard].clone();
                let mut after = before.clone();
                if after.voters.remove(replica).is_some()
                    || after.non_votings.remove(replica).is_some()
                {
                    after.removed.insert(*replica);
                    if after.leader == Some(*replica) {
                        after.leader = None;
                    }
                    self.check_change(*shard, &before, &after);
                    self.shards.insert(*shard, after);
                    self.changes += 1;
                }
            }
            Request::TransferLeader { shard, target } => {
                if self.leader_host(*shard).as_deref() != Some(h) {
                    return;
                }
                let s = &self.shards[shard];
                if let Some(th) = s.voters.get(target).cloned()
                    && self.runs(&th, *shard, *target)
                {
                    let s = self.shards.get_mut(shard).unwrap();
                    s.leader = Some(*target);
                    s.term += 1;
                }
            }
            Request::RemoveReplica { shard, replica } => {
                let s = &self.shards[shard];
                assert!(
                    s.removed.contains(replica),
                    "data of replica {replica} of shard {shard} deleted while it is a member"
                );
                let x = self.hosts.get_mut(h).unwrap();
                if x.replicas.get(shard).is_some_and(|(r, _)| r == replica) {
                    x.replicas.remove(shard);
                }
                x.stored.remove(&(*shard, *replica));
            }
        }
    }

    /// One round: every live host reports and carries out its answer,
    /// the leader ticks, shards elect leaders, take writes and replicate.
    fn step(&mut self) {
        let live: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, x)| x.alive)
            .map(|(h, _)| h.clone())
            .collect();
        for h in live {
            let report = self.report(&h);
            self.log.push(Command::Report(report.clone()));
            let (v, data) = apply_command(&mut self.master, Command::Report(report));
            assert_eq!(v, RESULT_OK);
            let reqs: Vec<Request> = serde_json::from_slice(&data).unwrap();
            for r in &reqs {
                self.execute(&h, r);
            }
        }
        self.now_ms += TICK_MS;
        let tick = Command::Tick {
            elapsed_ms: TICK_MS,
            first: false,
        };
        self.log.push(tick.clone());
        apply_command(&mut self.master, tick);
        check_master_invariants(&self.master);
        let shard_ids: Vec<u64> = self.shards.keys().copied().collect();
        for shard in shard_ids {
            if self.leader_host(shard).is_none() {
                let s = &self.shards[&shard];
                let up: Vec<u64> = s
                    .voters
                    .iter()
                    .filter(|(r, h)| self.runs(h, shard, **r))
                    .map(|(r, _)| *r)
                    .collect();
                let s = self.shards.get_mut(&shard).unwrap();
                s.leader = None;
                if up.len() >= quorum(s.voters.len()) {
                    s.leader = up.first().copied();
                    s.term += 1;
                }
            }
            let s = self.shards.get_mut(&shard).unwrap();
            if s.leader.is_some() {
                s.applied += 1;
            }
            let (applied, members): (u64, BTreeMap<u64, String>) = (
                s.applied,
                s.voters
                    .iter()
                    .chain(s.non_votings.iter())
                    .map(|(r, h)| (*r, h.clone()))
                    .collect(),
            );
            for (r, h) in members {
                if let Some(x) = self.hosts.get_mut(&h)
                    && x.alive
                    && let Some((rr, a)) = x.replicas.get_mut(&shard)
                    && *rr == r
                {
                    *a = applied;
                }
            }
        }
    }

    fn converged(&self) -> bool {
        if !self.master.ops.is_empty() {
            return false;
        }
        // Nothing left on hosts being drained.
        if self.master.shards.values().any(|r| {
            r.placement
                .values()
                .any(|h| self.master.hosts.get(h).is_some_and(|x| x.draining))
        }) {
            return false;
        }
        // Every live host reported and is seen alive.
        if self
            .hosts
            .iter()
            .any(|(h, x)| x.alive && self.master.hosts.get(h).is_none_or(|r| r.dead))
        {
            return false;
        }
        for (shard, rec) in &self.master.shards {
            let Some(s) = self.shards.get(shard) else {
                return false;
            };
            if s.voters.len() != rec.desired as usize
                || !s.non_votings.is_empty()
                || self.live_voters(*shard, &s.voters) != s.voters.len()
            {
                return false;
            }
        }
        let l = loads(&self.master);
        let (min, max) = (l.values().min().unwrap(), l.values().max().unwrap());
        // Removed replicas' data gone from live hosts.
        let leftovers =
            self.hosts.values().any(|x| {
                x.alive
                    && (x.replicas.iter().any(|(s, (r, _))| {
                        self.shards.get(s).is_some_and(|sh| sh.removed.contains(r))
                    }) || !x.stored.is_empty())
            });
        max - min <= 1 && !leftovers
    }

    fn run_until_converged(&mut self, max_steps: usize) -> usize {
        for i in 0..max_steps {
            if self.converged() {
                return i;
            }
            self.step();
        }
        panic!(
            "no convergence in {max_steps} steps: ops {:?}\nloads {:?}",
            self.master.ops,
            loads(&self.master)
        );
    }
}

fn check_master_invariants(s: &MasterState) {
    for (shard, rec) in &s.shards {
        let max_used = rec
            .placement
            .keys()
            .chain(rec.removed.iter())
            .max()
            .copied()
            .unwrap_or(0);
        assert!(
            rec.next_replica_id > max_used,
            "shard {shard}: next replica id {} not above used {max_used}",
            rec.next_replica_id
        );
        assert!(
            rec.placement.keys().all(|r| !rec.removed.contains(r)),
            "shard {shard}: a removed replica is placed"
        );
        if let Some(o) = s.ops.get(shard)
            && let Op::Move { add, .. } = &o.op
        {
            assert!(*add < rec.next_replica_id);
        }
    }
}

fn config() -> MasterConfig {
    MasterConfig {
        deployment_id: 7,
        dead_after_ms: DEAD_AFTER_MS,
        catch_up_lag: 5,
        rebalance: true,
        balance_interval_ms: 2 * TICK_MS,
        transfer_timeout_ms: 2_000,
        max_tick_ms: 1_000,
    }
}

fn started_world(hosts: usize, shards: u64) -> World {
    let mut w = World::new(hosts, config());
    // Hosts must have reported to be placed on.
    w.step();
    for s in 1..=shards {
        w.create(s, 3);
    }
    w.run_until_converged(200);
    w
}

#[test]
fn created_shards_start_on_three_hosts_and_balance() {
    let w = started_world(5, 8);
    for s in 1..=8 {
        assert_eq!(w.shards[&s].voters.len(), 3);
    }
    let l = loads(&w.master);
    assert!(l.values().max().unwrap() - l.values().min().unwrap() <= 1);
}

#[test]
fn a_dead_hosts_replicas_are_replaced_add_catch_up_promote_remove() {
    let mut w = started_world(5, 8);
    let victim = 1;
    let lost: Vec<u64> = w.hosts[&host(victim)].replicas.keys().copied().collect();
    assert!(!lost.is_empty());
    w.kill(victim);
    let mut phases_seen = BTreeSet::new();
    for _ in 0..400 {
        if w.converged() {
            break;
        }
        w.step();
        for o in w.master.ops.values() {
            if let Op::Move { phase, .. } = &o.op {
                phases_seen.insert(format!("{phase:?}"));
            }
        }
    }
    assert!(w.converged(), "ops {:?}", w.master.ops);
    assert!(w.master.hosts[&host(victim)].dead);
    for s in &lost {
        let sh = &w.shards[s];
        assert!(sh.voters.values().all(|h| *h != host(victim)));
        assert_eq!(sh.voters.len(), 3);
    }
    for p in ["AddLearner", "CatchUp", "Promote", "Remove"] {
        assert!(
            phases_seen.contains(p),
            "phase {p} never seen: {phases_seen:?}"
        );
    }
    assert!(w.master.counters.moves_done >= lost.len() as u64);
}

#[test]
fn no_membership_change_without_a_live_quorum() {
    let mut w = started_world(5, 1);
    let hosts: Vec<String> = w.shards[&1].voters.values().cloned().collect();
    let changes = w.changes;
    // Two of the three die: the shard cannot commit anything.
    for h in &hosts[..2] {
        let i: usize = h
            .trim_start_matches("10.0.0.")
            .trim_end_matches(":7000")
            .parse()
            .unwrap();
        w.kill(i);
    }
    for _ in 0..100 {
        w.step();
    }
    assert_eq!(w.changes, changes, "a change was made without quorum");
    assert!(w.master.ops.is_empty(), "ops {:?}", w.master.ops);
}

#[test]
fn a_returning_host_gets_its_removed_replicas_deleted() {
    let mut w = started_world(5, 6);
    let had: Vec<(u64, u64)> = w.hosts[&host(2)]
        .replicas
        .iter()
        .map(|(s, (r, _))| (*s, *r))
        .collect();
    assert!(!had.is_empty());
    w.kill(2);
    w.run_until_converged(400);
    // It comes back with its old data (the replicas stopped, say).
    let x = w.hosts.get_mut(&host(2)).unwrap();
    x.alive = true;
    x.stored = had.iter().copied().collect();
    w.run_until_converged(400);
    assert!(w.hosts[&host(2)].stored.is_empty());
    assert!(!w.master.hosts[&host(2)].dead);
}

#[test]
fn a_new_host_receives_replicas_until_balanced() {
    let mut w = started_world(5, 8);
    w.add_host(6);
    w.run_until_converged(600);
    let l = loads(&w.master);
    assert!(l[&host(6)] >= 3, "loads {l:?}");
}

#[test]
fn leaders_are_balanced_by_transfer() {
    let mut w = started_world(3, 6);
    // Every shard led by host 1.
    for s in w.shards.values_mut() {
        let r = s
            .voters
            .iter()
            .find(|(_, h)| **h == host(1))
            .map(|(r, _)| *r)
            .unwrap();
        s.leader = Some(r);
        s.term += 1;
    }
    for _ in 0..200 {
        w.step();
    }
    let c = leader_counts(&w.master);
    assert!(
        c.values().max().unwrap() - c.values().min().unwrap() <= 1,
        "leaders per host {c:?}"
    );
    assert!(w.master.counters.transfers >= 2);
}

#[test]
fn a_move_whose_target_dies_is_aborted_and_its_replica_removed() {
    let mut w = started_world(6, 4);
    w.kill(1);
    // Step until a repair move has a non-voting replica, then kill its host.
    let mut target = None;
    for _ in 0..100 {
        w.step();
        if let Some(o) = w.master.ops.values().find(|o| {
            matches!(
                o.op,
                Op::Move {
                    phase: Phase::CatchUp,
                    ..
                } | Op::Move {
                    phase: Phase::AddLearner,
                    ..
                }
            )
        }) && let Op::Move { to, .. } = &o.op
        {
            target = Some(to.clone());
            break;
        }
    }
    let target = target.expect("a repair started");
    let i: usize = target
        .trim_start_matches("10.0.0.")
        .trim_end_matches(":7000")
        .parse()
        .unwrap();
    w.kill(i);
    w.run_until_converged(800);
    assert!(
        w.master.counters.moves_aborted >= 1,
        "{:?}",
        w.master.counters
    );
}

#[test]
fn a_drained_host_is_emptied_and_takes_replicas_again_when_undrained() {
    let mut w = started_world(5, 8);
    let (v, _) = apply_command(
        &mut w.master,
        Command::Drain {
            host: host(2),
            drain: true,
        },
    );
    assert_eq!(v, RESULT_OK);
    w.run_until_converged(800);
    assert!(w.hosts[&host(2)].replicas.is_empty());
    assert!(
        w.master
            .shards
            .values()
            .all(|r| r.placement.values().all(|h| *h != host(2)))
    );
    apply_command(
        &mut w.master,
        Command::Drain {
            host: host(2),
            drain: false,
        },
    );
    w.run_until_converged(800);
    assert!(w.hosts[&host(2)].replicas.len() >= 4);
}

/// A new master leader gives every host a full `dead_after` to reach it
/// (reports may fail while leadership moves); a host silent for that long
/// under the new leader is declared dead.
#[test]
fn a_new_master_leader_counts_silence_from_its_first_tick() {
    let mut w = started_world(5, 1);
    let tick = |w: &mut World, first: bool| {
        apply_command(
            &mut w.master,
            Command::Tick {
                elapsed_ms: TICK_MS,
                first,
            },
        );
    };
    // No host reports from now on; most of dead_after passes.
    for _ in 0..(DEAD_AFTER_MS / TICK_MS - 2) {
        tick(&mut w, false);
    }
    // A new master leader: the count restarts.
    tick(&mut w, true);
    for _ in 0..(DEAD_AFTER_MS / TICK_MS) {
        tick(&mut w, false);
        assert!(
            w.master.hosts.values().all(|h| !h.dead),
            "declared dead too early"
        );
    }
    tick(&mut w, false);
    assert!(w.master.hosts.values().all(|h| h.dead));
}

/// An adopted shard (the master's own) is managed like a created one: its
/// new replicas take ids above every id it used, removed ones included.
#[test]
fn an_adopted_shard_is_repaired_with_fresh_ids() {
    let mut w = started_world(5, 0);
    let voters: BTreeMap<u64, String> = [(2, host(1)), (3, host(2)), (5, host(3))].into();
    w.shards.insert(
        99,
        Shard {
            voters: voters.clone(),
            removed: [1, 4].into(),
            ..Shard::default()
        },
    );
    for (r, h) in &voters {
        w.hosts.get_mut(h).unwrap().replicas.insert(99, (*r, 0));
        w.started.insert((99, *r), h.clone());
    }
    let adopt = Command::AdoptShard {
        shard: 99,
        desired: 3,
        voters,
        removed: [1, 4].into(),
    };
    assert_eq!(apply_command(&mut w.master, adopt.clone()).0, RESULT_OK);
    assert_ne!(
        apply_command(&mut w.master, adopt).0,
        RESULT_OK,
        "adopted twice"
    );
    assert_eq!(w.master.shards[&99].next_replica_id, 6);
    w.step();
    w.kill(2);
    w.run_until_converged(400);
    let s = &w.shards[&99];
    assert_eq!(s.voters.len(), 3);
    assert!(
        s.voters.contains_key(&6),
        "the replacement took id 6: {:?}",
        s.voters
    );
}

/// The master's replicas decide alike: replaying the log, from the start
/// or from a snapshot taken midway (a new leader, a restarted replica),
/// gives the very same state, operations in flight included.
#[test]
fn replicas_and_snapshots_decide_alike() {
    let mut w = started_world(5, 8);
    w.kill(3);
    for _ in 0..15 {
        w.step();
    }
    assert!(!w.master.ops.is_empty(), "a repair is in flight");
    let mid = w.log.len();
    let mut replica = MasterState::new(config());
    for c in &w.log[..mid] {
        apply_command(&mut replica, c.clone());
    }
    let snapshot = serde_json::to_vec(&replica).unwrap();
    w.run_until_converged(400);
    let mut restored: MasterState = serde_json::from_slice(&snapshot).unwrap();
    for c in &w.log[mid..] {
        apply_command(&mut restored, c.clone());
        apply_command(&mut replica, c.clone());
    }
    assert_eq!(restored, w.master);
    assert_eq!(replica, w.master);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Random clusters, random failures and new hosts: the invariants hold
    /// at every step (checked inside `step` and `execute`) and the cluster
    /// converges to full replication and balance.
    #[test]
    fn random_failures_converge_safely(
        n_hosts in 4usize..8,
        n_shards in 1u64..10,
        kills in proptest::collection::vec(0usize..8, 0..2),
        new_hosts in 0usize..3,
        gap in 0usize..30,
    ) {
        let mut w = started_world(n_hosts, n_shards);
        let mut next = n_hosts + 1;
        for k in kills {
            let i = k % n_hosts + 1;
            // Only failures a 3-replica shard survives: every shard keeps
            // a live quorum without host i.
            let keeps_quorum = w.shards.iter().all(|(s, sh)| {
                sh.voters.iter().filter(|(r, h)| **h != host(i) && w.runs(h, *s, **r)).count()
                    >= quorum(sh.voters.len())
            });
            if keeps_quorum && w.hosts[&host(i)].alive && w.hosts.values().filter(|h| h.alive).count() > 3 {
                w.kill(i);
            }
            for _ in 0..gap {
                w.step();
            }
        }
        for _ in 0..new_hosts {
            w.add_host(next);
            next += 1;
        }
        w.run_until_converged(2_000);
        for (shard, rec) in &w.master.shards {
            let s = &w.shards[shard];
            prop_assert_eq!(s.voters.len(), rec.desired as usize);
            prop_assert!(s.voters.values().all(|h| w.alive(h)));
            // No id reused: every id ever started is a member or removed.
            for ((sh, r), _) in w.started.iter().filter(|((sh, _), _)| sh == shard) {
                prop_assert!(s.voters.contains_key(r) || s.removed.contains(r), "shard {} replica {}", sh, r);
            }
        }
    }
}

/// A member the master did not place (a late answer added a replica whose
/// move the master had given up: found by the simulator in master mode) is
/// removed, and the shard is back to exactly its placement.
#[test]
fn a_stray_member_is_evicted() {
    let mut w = started_world(5, 2);
    // The id of a move the master gave up: handed out, recorded removed.
    let stray = {
        let rec = w.master.shards.get_mut(&1).unwrap();
        let id = rec.next_replica_id;
        rec.next_replica_id += 1;
        rec.removed.insert(id);
        id
    };
    let free = (1..=5)
        .map(host)
        .find(|h| !w.hosts[h].replicas.contains_key(&1))
        .unwrap();
    // The late addition took effect: a non-voting member that runs.
    w.shards
        .get_mut(&1)
        .unwrap()
        .non_votings
        .insert(stray, free.clone());
    w.hosts
        .get_mut(&free)
        .unwrap()
        .replicas
        .insert(1, (stray, 0));
    w.run_until_converged(400);
    assert!(w.shards[&1].removed.contains(&stray));
    assert!(!w.hosts[&free].replicas.contains_key(&1));
    assert_eq!(w.master.counters.strays_removed, 1);
}

/// A new replica that stops running before its promotion (its host
/// restarted before anything of it was durable, found by the simulator in
/// master mode) is started again; the move does not wait for ever.
#[test]
fn a_new_replica_lost_before_promotion_is_started_again() {
    let mut w = started_world(6, 4);
    w.kill(1);
    let mut lost = None;
    for _ in 0..200 {
        w.step();
        if let Some((shard, to, add)) = w.master.ops.iter().find_map(|(s, o)| match &o.op {
            Op::Move {
                phase: Phase::Promote,
                to,
                add,
                ..
            } => Some((*s, to.clone(), *add)),
            _ => None,
        }) {
            lost = Some((shard, to, add));
            break;
        }
    }
    let (shard, to, add) = lost.expect("a move reached Promote");
    let x = w.hosts.get_mut(&to).unwrap();
    assert_eq!(x.replicas.remove(&shard).map(|(r, _)| r), Some(add));
    // Its host reports first (the master knows what it could know).
    let report = w.report(&to);
    let (_, data) = apply_command(&mut w.master, Command::Report(report));
    let reqs: Vec<Request> = serde_json::from_slice(&data).unwrap();
    assert!(
        reqs.iter()
            .any(|r| matches!(r, Request::StartReplica { replica, .. } if *replica == add)),
        "the lost replica is not started again: {reqs:?}"
    );
    for r in &reqs {
        w.execute(&to, r);
    }
    w.run_until_converged(800);
    assert!(w.shards[&shard].voters.contains_key(&add));
}

/// A placed replica that its live host neither runs nor stores any more
/// (its start was not durable when the host crashed: found by the
/// simulator in master mode) is replaced like one on a dead host; it is
/// never started again under its id.
#[test]
fn a_placed_replica_whose_data_is_gone_is_replaced() {
    let mut w = started_world(5, 4);
    let (h, (r, _)) = w
        .hosts
        .iter()
        .find_map(|(h, x)| x.replicas.get(&1).map(|r| (h.clone(), *r)))
        .unwrap();
    w.hosts.get_mut(&h).unwrap().replicas.remove(&1);
    w.run_until_converged(400);
    let s = &w.shards[&1];
    assert!(s.removed.contains(&r), "{s:?}");
    assert_eq!(s.voters.len(), 3);
    assert!(w.master.counters.repairs_done >= 1);
}
