//! The master's decisions: pure functions of the replicated state.
//!
//! [`decide`] looks at the state at a replicated time and returns what to
//! change ([`Decision`]s: declare hosts dead, start, advance and finish
//! operations); [`apply_decisions`] carries them into the state, asserting
//! the invariants; [`requests_for`] tells a reporting host what to do for
//! the operations in flight. The state machine runs `decide` when it
//! applies a tick and `requests_for` when it applies a report, so every
//! replica of the master decides alike and a new master leader continues
//! exactly where the old one stopped.
//!
//! Safety rules (docs/master.md gives the argument):
//! - at most one operation in flight per shard (the `ops` map, asserted);
//! - a new replica always gets the shard's `next_replica_id`, which only
//!   grows: ids are never reused;
//! - a membership change is started and requested only while the shard
//!   keeps a quorum of live voters after it ([`change_is_safe`]): replicas
//!   are added as non-voting members, promoted only when the promotion
//!   keeps a live quorum, and a replica is removed only once its
//!   replacement votes and the removal keeps a live quorum.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    HostId, MasterState, Membership, MoveReason, Op, OpRecord, Phase, ReplicaState, Request,
    StartKind,
};

/// One change [`decide`] asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The host was silent for longer than `dead_after_ms`.
    DeclareDead(HostId),
    /// Start an operation on a shard that has none in flight.
    Begin {
        /// The shard.
        shard: u64,
        /// The operation.
        op: Op,
    },
    /// Move an operation to its next phase.
    SetPhase {
        /// The shard.
        shard: u64,
        /// The new phase.
        phase: Phase,
    },
    /// The new replica of a move votes: record it in the placement.
    Place {
        /// The shard.
        shard: u64,
        /// The replica.
        replica: u64,
        /// Its host.
        host: HostId,
    },
    /// A replica left the shard for good.
    Removed {
        /// The shard.
        shard: u64,
        /// The replica.
        replica: u64,
    },
    /// The shard's operation is over (`aborted`: given up).
    Finish {
        /// The shard.
        shard: u64,
        /// Whether it was given up.
        aborted: bool,
    },
    /// A balancing operation was started (rate limit).
    Balanced,
}

/// The shard's leader as the live hosts report it.
#[derive(Clone, Debug)]
pub struct LeaderView<'a> {
    /// The host it runs on.
    pub host: &'a HostId,
    /// The leading replica.
    pub replica: u64,
    /// Its applied index.
    pub applied: u64,
    /// The membership it applied.
    pub membership: &'a Membership,
    /// A membership change is proposed and not applied yet (a change the
    /// master asked for may still take effect: no other change is
    /// started meanwhile).
    pub pending_change: bool,
}

/// Raft majority of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Whether `host` is known and not declared dead.
pub fn host_alive(s: &MasterState, host: &str) -> bool {
    s.hosts.get(host).is_some_and(|h| !h.dead)
}

/// The replica of `shard` in a report (reports hold their replicas sorted
/// by shard, one per shard: `sm` sorts them when it applies a report).
pub fn reported(report: &crate::model::Report, shard: u64) -> Option<&ReplicaState> {
    report
        .replicas
        .binary_search_by_key(&shard, |r| r.shard)
        .ok()
        .map(|i| &report.replicas[i])
}

/// The replica `replica` of `shard` as `host` last reported it, when the
/// host is alive and the replica runs without failure.
pub fn running<'a>(
    s: &'a MasterState,
    host: &str,
    shard: u64,
    replica: u64,
) -> Option<&'a ReplicaState> {
    let h = s.hosts.get(host).filter(|h| !h.dead)?;
    reported(&h.report, shard).filter(|r| r.replica == replica && !r.failed)
}

/// The leader of `shard` with the highest term among live hosts' reports.
pub fn leader_view<'a>(s: &'a MasterState, shard: u64) -> Option<LeaderView<'a>> {
    let mut best: Option<(u64, LeaderView<'a>)> = None;
    for (host, h) in &s.hosts {
        if h.dead {
            continue;
        }
        if let Some(r) = reported(&h.report, shard) {
            if !r.leader || r.failed {
                continue;
            }
            let Some(m) = &r.membership else { continue };
            if best.as_ref().is_none_or(|(t, _)| r.term > *t) {
                best = Some((
                    r.term,
                    LeaderView {
                        host,
                        replica: r.replica,
                        applied: r.applied,
                        membership: m,
                        pending_change: r.pending_change,
                    },
                ));
            }
        }
    }
    best.map(|(_, v)| v)
}

/// Whether live `host` reported neither running nor storing replica
/// `replica` of `shard`.
fn replica_gone(s: &MasterState, host: &str, shard: u64, replica: u64) -> bool {
    // (A report cut at its bound says nothing about what it left out.)
    let max = crate::sm::MAX_REPORT_REPLICAS;
    s.hosts.get(host).is_some_and(|h| {
        !h.dead
            && h.report.replicas.len() < max
            && h.report.stored.len() < max
            && reported(&h.report, shard).is_none_or(|r| r.replica != replica)
            && !h.report.stored.contains(&(shard, replica))
    })
}

/// Voters of `m` that run on live hosts.
pub fn live_voters(s: &MasterState, shard: u64, m: &Membership) -> usize {
    m.voters
        .iter()
        .filter(|(r, host)| running(s, host, shard, **r).is_some())
        .count()
}

/// A membership change [`change_is_safe`] judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Promote a non-voting replica to voter.
    Promote(u64),
    /// Remove a replica.
    Remove(u64),
}

/// Whether applying `change` to membership `m` leaves the shard with a
/// quorum of live voters (and at least one voter). Adding a non-voting
/// replica never changes the quorum and needs no check.
pub fn change_is_safe(s: &MasterState, shard: u64, m: &Membership, change: Change) -> bool {
    let voters = m.voters.len();
    let live = live_voters(s, shard, m);
    let (voters_after, live_after) = match change {
        Change::Promote(r) => {
            let Some(host) = m.non_votings.get(&r) else {
                return m.voters.contains_key(&r) && live >= quorum(voters);
            };
            let up = usize::from(running(s, host, shard, r).is_some());
            (voters + 1, live + up)
        }
        Change::Remove(r) => match m.voters.get(&r) {
            None => return true,
            Some(host) => {
                let up = usize::from(running(s, host, shard, r).is_some());
                (voters - 1, live - up)
            }
        },
    };
    voters_after >= 1 && live_after >= quorum(voters_after)
}

/// Replicas placed on each live host that is not being drained, counting
/// the new replicas of moves in flight (the hosts they go to) and not the
/// ones being removed. Its keys are the hosts that may receive replicas.
pub fn loads(s: &MasterState) -> BTreeMap<&HostId, usize> {
    let mut load: BTreeMap<&HostId, usize> = s
        .hosts
        .iter()
        .filter(|(_, h)| !h.dead && !h.draining)
        .map(|(id, _)| (id, 0))
        .collect();
    for (shard, rec) in &s.shards {
        let removing = match s.ops.get(shard).map(|o| &o.op) {
            Some(Op::Move {
                remove: Some((r, _)),
                ..
            }) => Some(*r),
            _ => None,
        };
        for (r, host) in &rec.placement {
            if Some(*r) != removing
                && let Some(l) = load.get_mut(host)
            {
                *l += 1;
            }
        }
        if let Some(OpRecord {
            op:
                Op::Move {
                    to,
                    phase: Phase::AddLearner | Phase::CatchUp | Phase::Promote,
                    ..
                },
            ..
        }) = s.ops.get(shard)
            && let Some(l) = load.get_mut(to)
        {
            *l += 1;
        }
    }
    load
}

/// Hosts that hold (or are about to hold, or store data of) a replica of
/// `shard`: never targets of a new replica of it.
fn holders(s: &MasterState, shard: u64) -> BTreeSet<&HostId> {
    let mut out: BTreeSet<&HostId> = BTreeSet::new();
    if let Some(rec) = s.shards.get(&shard) {
        out.extend(rec.placement.values());
    }
    match s.ops.get(&shard).map(|o| &o.op) {
        Some(Op::Move { to, .. }) => {
            out.insert(to);
        }
        Some(Op::Create { members }) => out.extend(members.values()),
        _ => {}
    }
    for (id, h) in &s.hosts {
        if reported(&h.report, shard).is_some()
            || h.report.stored.iter().any(|(sh, _)| *sh == shard)
        {
            out.insert(id);
        }
    }
    out
}

/// The least loaded live host below its capacity that holds no replica
/// of `shard` (ties broken by host id).
fn pick_target(s: &MasterState, shard: u64, load: &BTreeMap<&HostId, usize>) -> Option<HostId> {
    let holders = holders(s, shard);
    load.iter()
        .filter(|(h, l)| {
            !holders.contains(*h) && **l < s.hosts[h.as_str()].report.capacity as usize
        })
        .min_by_key(|&(h, l)| (*l, *h))
        .map(|(h, _)| (*h).clone())
}

/// Picks `n` distinct live hosts for a new shard, least loaded first.
pub fn pick_hosts(s: &MasterState, n: usize) -> Option<Vec<HostId>> {
    let load = loads(s);
    let mut hosts: Vec<(usize, &HostId)> = load
        .iter()
        .filter(|(h, l)| **l < s.hosts[h.as_str()].report.capacity as usize)
        .map(|(h, l)| (*l, *h))
        .collect();
    hosts.sort();
    (hosts.len() >= n).then(|| hosts[..n].iter().map(|(_, h)| (*h).clone()).collect())
}

/// Leaders per live host not being drained, from the leader views of
/// managed shards.
pub fn leader_counts(s: &MasterState) -> BTreeMap<&HostId, usize> {
    let mut out: BTreeMap<&HostId, usize> = s
        .hosts
        .iter()
        .filter(|(_, h)| !h.dead && !h.draining)
        .map(|(id, _)| (id, 0))
        .collect();
    for shard in s.shards.keys() {
        if let Some(v) = leader_view(s, *shard)
            && let Some(c) = out.get_mut(v.host)
        {
            *c += 1;
        }
    }
    out
}

/// Whether every placed replica of `shard` runs on a live host that
/// reported lately, the leader is known and its voters are exactly the
/// placement.
fn healthy(s: &MasterState, shard: u64) -> bool {
    let rec = &s.shards[&shard];
    let Some(v) = leader_view(s, shard) else {
        return false;
    };
    // Every placed replica's host reported within half of `dead_after_ms`.
    let fresh = |h: &str| {
        s.hosts
            .get(h)
            .is_some_and(|x| x.last_seen_ms + s.config.dead_after_ms / 2 >= s.now_ms)
    };
    rec.placement.len() == rec.desired as usize
        && !v.pending_change
        && v.membership.non_votings.is_empty()
        && v.membership.voters.keys().eq(rec.placement.keys())
        && rec
            .placement
            .iter()
            .all(|(r, h)| running(s, h, shard, *r).is_some() && fresh(h))
}

/// What should change at replicated time `now` (see the module doc).
pub fn decide(s: &MasterState, now: u64) -> Vec<Decision> {
    let mut out: Vec<Decision> = s
        .hosts
        .iter()
        .filter(|(_, h)| {
            // Silence counts from the later of the last report and the
            // current master leader's first tick.
            let since = h.last_seen_ms.max(s.leader_since_ms);
            !h.dead && now.saturating_sub(since) > s.config.dead_after_ms
        })
        .map(|(id, _)| Decision::DeclareDead(id.clone()))
        .collect();
    // Decisions of this round see the newly silent hosts dead already (a
    // copy of the state only when there are any).
    let view;
    let s = if out.is_empty() {
        s
    } else {
        let mut v = s.clone();
        for d in &out {
            if let Decision::DeclareDead(id) = d {
                v.hosts.get_mut(id).expect("listed").dead = true;
            }
        }
        view = v;
        &view
    };
    let mut load = loads(s);
    let mut repairing = false;
    for (&shard, rec) in &s.shards {
        match s.ops.get(&shard) {
            Some(op) => {
                repairing |= matches!(
                    op.op,
                    Op::Create { .. }
                        | Op::Move {
                            reason: MoveReason::Repair,
                            ..
                        }
                );
                progress(s, shard, op, now, &mut out);
            }
            None => {
                // Repair: a placed replica on a dead host, or too few.
                let Some(v) = leader_view(s, shard) else {
                    continue;
                };
                // A membership change proposed and not applied yet (one
                // the master gave up, say) may still take effect: nothing
                // new meanwhile.
                if v.pending_change {
                    repairing = true;
                    continue;
                }
                // A member the master did not place (with no operation in
                // flight, the leader's members are the placement): removed
                // first, as it stands in the way of every other change.
                if let Some(&stray) = v
                    .membership
                    .voters
                    .keys()
                    .chain(v.membership.non_votings.keys())
                    .find(|r| !rec.placement.contains_key(r))
                {
                    repairing = true;
                    out.push(Decision::Begin {
                        shard,
                        op: Op::Evict { replica: stray },
                    });
                    continue;
                }
                // A replica on a dead host first, then one its live host
                // neither runs nor stores (its data is gone: a replica
                // whose start was not yet durable when the host crashed;
                // it cannot come back under its id, which may have voted),
                // else one on a host being drained.
                let draining = |h: &str| s.hosts.get(h).is_some_and(|x| x.draining);
                let lost = rec
                    .placement
                    .iter()
                    .find(|(_, h)| !host_alive(s, h))
                    .or_else(|| {
                        rec.placement
                            .iter()
                            .find(|(r, h)| replica_gone(s, h, shard, **r))
                    })
                    .or_else(|| rec.placement.iter().find(|(_, h)| draining(h)))
                    .map(|(r, h)| (*r, h.clone()));
                let short = rec.placement.len() < rec.desired as usize;
                if lost.is_none() && !short {
                    continue;
                }
                repairing = true;
                // A change can commit only with a live quorum of voters.
                if live_voters(s, shard, v.membership) < quorum(v.membership.voters.len()) {
                    continue;
                }
                let Some(to) = pick_target(s, shard, &load) else {
                    continue;
                };
                *load.get_mut(&to).expect("target is live") += 1;
                out.push(Decision::Begin {
                    shard,
                    op: Op::Move {
                        add: rec.next_replica_id,
                        to,
                        remove: if short { None } else { lost },
                        phase: Phase::AddLearner,
                        reason: MoveReason::Repair,
                    },
                });
            }
        }
    }
    // Balancing moves healthy replicas, so it needs a true picture of
    // which hosts live: not before the current master leader has led for
    // `dead_after_ms` (until then a host that died may still count as
    // alive, its silence counted from the leader's first tick; found by
    // the simulator in master mode: under master leadership changes a
    // balancing move removed a live replica of a shard whose other
    // replica's host had died unnoticed).
    if !s.config.rebalance
        || repairing
        || !s.ops.is_empty()
        || now.saturating_sub(s.last_balance_ms) < s.config.balance_interval_ms
        || now.saturating_sub(s.leader_since_ms) <= s.config.dead_after_ms
    {
        return out;
    }
    if let Some(d) = balance_replicas(s, &load) {
        out.push(d);
        out.push(Decision::Balanced);
    } else if let Some(d) = balance_leaders(s) {
        out.push(d);
        out.push(Decision::Balanced);
    }
    out
}

/// Advances the operation in flight on `shard` as far as the reports allow.
fn progress(s: &MasterState, shard: u64, rec: &OpRecord, now: u64, out: &mut Vec<Decision>) {
    let Some(v) = leader_view(s, shard) else {
        return;
    };
    let m = v.membership;
    match &rec.op {
        Op::Create { members } => {
            if m.voters.keys().eq(members.keys()) {
                out.push(Decision::Finish {
                    shard,
                    aborted: false,
                });
            }
        }
        Op::Evict { replica } => {
            if !m.contains(*replica) {
                out.push(Decision::Removed {
                    shard,
                    replica: *replica,
                });
                out.push(Decision::Finish {
                    shard,
                    aborted: false,
                });
            }
        }
        Op::Transfer { to } => {
            if v.replica == *to || now.saturating_sub(rec.started_ms) > s.config.transfer_timeout_ms
            {
                out.push(Decision::Finish {
                    shard,
                    aborted: v.replica != *to,
                });
            }
        }
        Op::Move {
            add,
            to,
            remove,
            phase,
            ..
        } => {
            let target_dead = !host_alive(s, to);
            match phase {
                Phase::AddLearner | Phase::CatchUp if target_dead => {
                    out.push(Decision::SetPhase {
                        shard,
                        phase: Phase::Abort,
                    });
                }
                Phase::AddLearner => {
                    if m.contains(*add) {
                        out.push(Decision::SetPhase {
                            shard,
                            phase: Phase::CatchUp,
                        });
                    }
                }
                Phase::CatchUp => {
                    if let Some(r) = running(s, to, shard, *add)
                        && r.applied + s.config.catch_up_lag >= v.applied
                    {
                        out.push(Decision::SetPhase {
                            shard,
                            phase: Phase::Promote,
                        });
                    }
                }
                Phase::Promote => {
                    if m.voters.contains_key(add) {
                        out.push(Decision::Place {
                            shard,
                            replica: *add,
                            host: to.clone(),
                        });
                        if remove.is_some() {
                            out.push(Decision::SetPhase {
                                shard,
                                phase: Phase::Remove,
                            });
                        } else {
                            out.push(Decision::Finish {
                                shard,
                                aborted: false,
                            });
                        }
                    } else if target_dead {
                        out.push(Decision::SetPhase {
                            shard,
                            phase: Phase::Abort,
                        });
                    }
                }
                Phase::Remove => {
                    let (old, _) = remove
                        .as_ref()
                        .expect("a move in Remove has a replica to remove");
                    if !m.contains(*old) {
                        out.push(Decision::Removed {
                            shard,
                            replica: *old,
                        });
                        out.push(Decision::Finish {
                            shard,
                            aborted: false,
                        });
                    }
                }
                Phase::Abort => {
                    // Not while a change is pending: the addition may
                    // still take effect (and the next move would then be
                    // a second change in flight; found by the simulator).
                    if !m.contains(*add) && !v.pending_change {
                        out.push(Decision::Removed {
                            shard,
                            replica: *add,
                        });
                        out.push(Decision::Finish {
                            shard,
                            aborted: true,
                        });
                    }
                }
            }
        }
    }
}

/// A move from the most loaded live host to a host with at least two
/// fewer replicas, of a healthy shard the target does not hold.
fn balance_replicas(s: &MasterState, load: &BTreeMap<&HostId, usize>) -> Option<Decision> {
    let (&from, &max) = load
        .iter()
        .max_by_key(|(h, l)| (**l, std::cmp::Reverse(**h)))?;
    for (&shard, rec) in &s.shards {
        let Some((&old, _)) = rec.placement.iter().find(|(_, h)| *h == from) else {
            continue;
        };
        if !healthy(s, shard) {
            continue;
        }
        let Some(to) = pick_target(s, shard, load) else {
            continue;
        };
        if load[&to] + 2 > max {
            continue;
        }
        return Some(Decision::Begin {
            shard,
            op: Op::Move {
                add: rec.next_replica_id,
                to,
                remove: Some((old, from.clone())),
                phase: Phase::AddLearner,
                reason: MoveReason::Balance,
            },
        });
    }
    None
}

/// A leadership transfer from a host leading at least two more shards
/// than another live host that runs a voter of one of them.
fn balance_leaders(s: &MasterState) -> Option<Decision> {
    let counts = leader_counts(s);
    let mut by_count: Vec<(&HostId, usize)> = counts.iter().map(|(h, c)| (*h, *c)).collect();
    by_count.sort_by_key(|(h, c)| (std::cmp::Reverse(*c), (*h).clone()));
    for &(from, fc) in &by_count {
        for &shard in s.shards.keys() {
            let Some(v) = leader_view(s, shard) else {
                continue;
            };
            if v.host != from || !healthy(s, shard) {
                continue;
            }
            let best = v
                .membership
                .voters
                .iter()
                .filter(|(r, h)| {
                    **r != v.replica
                        && counts.get(h).is_some_and(|c| c + 2 <= fc)
                        && running(s, h, shard, **r).is_some()
                })
                .min_by_key(|(r, h)| (counts[h], **r));
            if let Some((r, _)) = best {
                return Some(Decision::Begin {
                    shard,
                    op: Op::Transfer { to: *r },
                });
            }
        }
    }
    None
}

/// Carries `decisions` into `s` (made at replicated time `now`),
/// asserting the invariants they must keep.
pub fn apply_decisions(s: &mut MasterState, now: u64, decisions: &[Decision]) {
    for d in decisions {
        match d {
            Decision::DeclareDead(h) => {
                let rec = s.hosts.get_mut(h).expect("a host declared dead is known");
                rec.dead = true;
                s.counters.hosts_declared_dead += 1;
            }
            Decision::Begin { shard, op } => {
                assert!(
                    !s.ops.contains_key(shard),
                    "two operations in flight on shard {shard}"
                );
                let rec = s
                    .shards
                    .get_mut(shard)
                    .expect("an operation's shard is known");
                if let Op::Move { add, .. } = op {
                    assert_eq!(
                        *add, rec.next_replica_id,
                        "a new replica takes the shard's next id"
                    );
                    assert!(
                        !rec.removed.contains(add) && !rec.placement.contains_key(add),
                        "replica id {add} of shard {shard} reused"
                    );
                    rec.next_replica_id += 1;
                }
                s.ops.insert(
                    *shard,
                    OpRecord {
                        op: op.clone(),
                        started_ms: now,
                    },
                );
            }
            Decision::SetPhase { shard, phase } => {
                let Some(OpRecord {
                    op: Op::Move { phase: p, .. },
                    ..
                }) = s.ops.get_mut(shard)
                else {
                    panic!("a phase change needs a move in flight on shard {shard}");
                };
                *p = *phase;
            }
            Decision::Place {
                shard,
                replica,
                host,
            } => {
                let rec = s.shards.get_mut(shard).expect("placed shard is known");
                assert!(!rec.removed.contains(replica), "a removed replica placed");
                rec.placement.insert(*replica, host.clone());
            }
            Decision::Removed { shard, replica } => {
                let rec = s.shards.get_mut(shard).expect("removed shard is known");
                rec.placement.remove(replica);
                rec.removed.insert(*replica);
            }
            Decision::Finish { shard, aborted } => {
                let op = s
                    .ops
                    .remove(shard)
                    .expect("a finished operation was in flight");
                match op.op {
                    Op::Move { .. } if *aborted => s.counters.moves_aborted += 1,
                    Op::Move { reason, .. } => {
                        s.counters.moves_done += 1;
                        if reason == MoveReason::Repair {
                            s.counters.repairs_done += 1;
                        }
                    }
                    Op::Transfer { .. } => s.counters.transfers += 1,
                    Op::Evict { .. } => s.counters.strays_removed += 1,
                    Op::Create { .. } => {}
                }
            }
            Decision::Balanced => s.last_balance_ms = now,
        }
    }
    assert!(
        s.ops.keys().all(|k| s.shards.contains_key(k)),
        "an operation on an unknown shard"
    );
}

/// What `host` should do now for the operations in flight, and the
/// removed replicas it still holds.
pub fn requests_for(s: &MasterState, host: &str) -> Vec<Request> {
    let mut out = Vec::new();
    let Some(h) = s.hosts.get(host) else {
        return out;
    };
    let runs =
        |shard: u64, replica: u64| reported(&h.report, shard).is_some_and(|r| r.replica == replica);
    for (&shard, rec) in &s.ops {
        let v = leader_view(s, shard);
        let leads = v.as_ref().is_some_and(|v| v.host == host);
        match &rec.op {
            Op::Create { members } => {
                for (r, mh) in members {
                    if mh == host && !runs(shard, *r) {
                        out.push(Request::StartReplica {
                            shard,
                            replica: *r,
                            start: StartKind::New(members.clone()),
                            non_voting: false,
                        });
                    }
                }
            }
            Op::Transfer { to } => {
                if let Some(v) = v.filter(|_| leads)
                    && v.replica != *to
                {
                    out.push(Request::TransferLeader { shard, target: *to });
                }
            }
            Op::Evict { replica } => {
                let Some(v) = v.filter(|_| leads) else {
                    continue;
                };
                let m = v.membership;
                if v.replica == *replica {
                    // The stray leads: leadership goes to a placed voter
                    // first.
                    if let Some((&target, _)) = m.voters.iter().find(|(r, h)| {
                        s.shards[&shard].placement.contains_key(r)
                            && running(s, h, shard, **r).is_some()
                    }) {
                        out.push(Request::TransferLeader { shard, target });
                    }
                } else if m.contains(*replica)
                    && !v.pending_change
                    && change_is_safe(s, shard, m, Change::Remove(*replica))
                {
                    out.push(Request::Delete {
                        shard,
                        replica: *replica,
                        based_on: m.config_change_id,
                    });
                }
            }
            Op::Move {
                add,
                to,
                remove,
                phase,
                ..
            } => {
                // Until it votes, the new replica is started again where it
                // stopped running (its host restarted before anything of it
                // was durable, say: a master that waited in `Promote` for a
                // replica nobody restarts would wait for ever).
                if to == host
                    && matches!(phase, Phase::AddLearner | Phase::CatchUp | Phase::Promote)
                    && !runs(shard, *add)
                {
                    out.push(Request::StartReplica {
                        shard,
                        replica: *add,
                        start: StartKind::Join,
                        non_voting: true,
                    });
                }
                let Some(v) = v.filter(|_| leads) else {
                    continue;
                };
                let m = v.membership;
                match phase {
                    // Membership changes only while none is pending (one
                    // asked for before may still take effect).
                    Phase::AddLearner => {
                        if !m.contains(*add) && !v.pending_change {
                            out.push(Request::AddNonVoting {
                                shard,
                                replica: *add,
                                host: to.clone(),
                                based_on: m.config_change_id,
                            });
                        }
                    }
                    Phase::CatchUp => {}
                    Phase::Promote => {
                        if m.non_votings.contains_key(add)
                            && !v.pending_change
                            && change_is_safe(s, shard, m, Change::Promote(*add))
                        {
                            out.push(Request::Promote {
                                shard,
                                replica: *add,
                                based_on: m.config_change_id,
                            });
                        }
                    }
                    Phase::Remove => {
                        let (old, _) = remove.as_ref().expect("a move in Remove has a replica");
                        if v.replica == *old {
                            // The leader goes last: hand leadership to the
                            // new replica first.
                            out.push(Request::TransferLeader {
                                shard,
                                target: *add,
                            });
                        } else if m.contains(*old)
                            && !v.pending_change
                            && change_is_safe(s, shard, m, Change::Remove(*old))
                        {
                            out.push(Request::Delete {
                                shard,
                                replica: *old,
                                based_on: m.config_change_id,
                            });
                        }
                    }
                    Phase::Abort => {
                        if m.contains(*add)
                            && !v.pending_change
                            && change_is_safe(s, shard, m, Change::Remove(*add))
                        {
                            out.push(Request::Delete {
                                shard,
                                replica: *add,
                                based_on: m.config_change_id,
                            });
                        }
                    }
                }
            }
        }
    }
    // A shard whose leader runs on a host declared dead but still leads
    // (the host is cut off from the master, not from its peers): no live
    // leader reports, so nothing could progress. The first live placed
    // replica asks for leadership (the request is forwarded to the leader).
    for r in &h.report.replicas {
        let shard = r.shard;
        let Some(rec) = s.shards.get(&shard) else {
            continue;
        };
        if leader_view(s, shard).is_some() {
            continue;
        }
        let first_live = rec
            .placement
            .iter()
            .filter(|(r, ph)| running(s, ph, shard, **r).is_some())
            .min_by_key(|&(_, ph)| ph);
        let Some((&mine, ph)) = first_live else {
            continue;
        };
        if ph != host {
            continue;
        }
        let Some(r) = running(s, host, shard, mine) else {
            continue;
        };
        let leader_on_dead_host = rec
            .placement
            .get(&r.leader_id)
            .is_some_and(|lh| !host_alive(s, lh));
        if r.leader_id != 0 && r.leader_id != mine && leader_on_dead_host {
            out.push(Request::TransferLeader {
                shard,
                target: mine,
            });
        }
    }
    // Removed replicas still on the host: stop them and delete their data,
    // at once. (A removed replica that still runs may vote in an older
    // membership that a restarted voter falls back to: docs/master.md,
    // "Removed replicas".)
    let held = h
        .report
        .replicas
        .iter()
        .map(|r| (r.shard, r.replica))
        .chain(h.report.stored.iter().copied());
    for (shard, replica) in held {
        // Removed, and not a member as the leader sees it (a stray, added
        // by a late answer after the master recorded it removed, stays
        // until `Op::Evict` takes it out of the membership).
        if s.shards
            .get(&shard)
            .is_some_and(|rec| rec.removed.contains(&replica))
            && leader_view(s, shard).is_some_and(|v| !v.membership.contains(replica))
        {
            out.push(Request::RemoveReplica { shard, replica });
        }
    }
    out
}
