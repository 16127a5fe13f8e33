//! The checkers: Raft safety as observable through the public API after
//! every round, convergence after healing, and the final checks of the
//! client histories.

use std::collections::BTreeMap;

use longship::{Index, ReplicaId, ShardId, Term};

use super::Sim;
use crate::kv::{DIGEST_QUERY, Digest};
use crate::linearizability::kv::{KvInput, KvModel, KvOutput, prune_invisible_unknowns};
use crate::linearizability::{Budget, Outcome, Verdict, check};

/// What the checkers remember between rounds.
#[derive(Default)]
pub(super) struct Checker {
    /// The leader of each (shard, term) any replica believed in.
    leaders: BTreeMap<(ShardId, Term), ReplicaId>,
    /// Highest applied index of each running replica, per host
    /// incarnation: (host, shard, replica) → index.
    applied: BTreeMap<(usize, ShardId, ReplicaId), Index>,
    /// Highest term of each running replica, per host incarnation.
    terms: BTreeMap<(usize, ShardId, ReplicaId), Term>,
    /// The state digest of each shard after each applied index.
    digests: BTreeMap<(ShardId, u64), u64>,
}

impl Checker {
    /// Host `h` crashed: its replicas start over from what was durable.
    pub(super) fn host_crashed(&mut self, h: usize) {
        self.applied.retain(|k, _| k.0 != h);
        self.terms.retain(|k, _| k.0 != h);
    }
}

impl Sim {
    /// Raft safety as observable: at most one leader per term per shard;
    /// applied indexes never go backwards (except across a crash);
    /// replicas that applied the same index have the same state.
    pub(super) fn check_safety(&mut self) -> Result<(), String> {
        for h in 0..self.hosts.len() {
            let Some(nh) = &self.hosts[h].nh else {
                continue;
            };
            let info = nh.get_node_host_info();
            for s in &info.shards {
                // The core's own invariants, after every step (a failed
                // replica's core is inert and not checked).
                if !s.failed
                    && let Err(e) = nh.check_core_invariants(s.shard_id)
                {
                    return Err(format!(
                        "replica {} of {} on host {h}: {e}",
                        s.replica_id, s.shard_id
                    ));
                }
                self.trace.write_u64(s.shard_id.0);
                self.trace.write_u64(s.applied.0);
                self.trace.write_u64(s.leader_id.0);
                self.trace.write_u64(s.term.0);
                if !s.leader_id.is_none() {
                    let leader = *self
                        .checker
                        .leaders
                        .entry((s.shard_id, s.term))
                        .or_insert(s.leader_id);
                    if leader != s.leader_id {
                        return Err(format!(
                            "two leaders of {} in term {}: {} and {} (seen by replica {} on host {h})",
                            s.shard_id, s.term, leader, s.leader_id, s.replica_id
                        ));
                    }
                }
                let witness = self.hosts[h]
                    .hosted
                    .get(&s.shard_id)
                    .is_some_and(|x| x.cfg.replica_id == s.replica_id && x.cfg.is_witness);
                if witness && s.is_leader {
                    return Err(format!(
                        "witness {} of {} on host {h} leads term {}",
                        s.replica_id, s.shard_id, s.term
                    ));
                }
                let key = (h, s.shard_id, s.replica_id);
                let term_before = self.checker.terms.insert(key, s.term);
                if let Some(before) = term_before
                    && s.term < before
                {
                    return Err(format!(
                        "term of replica {} of {} on host {h} went back from {} to {}",
                        s.replica_id, s.shard_id, before, s.term
                    ));
                }
                let before = self.checker.applied.insert(key, s.applied);
                if let Some(before) = before
                    && s.applied < before
                {
                    return Err(format!(
                        "applied index of replica {} of {} on host {h} went back from {} to {}",
                        s.replica_id, s.shard_id, before, s.applied
                    ));
                }
                // The state only changes when the applied index does.
                if s.failed || before == Some(s.applied) {
                    continue;
                }
                let d = if s.shard_id == longship_master::MASTER_SHARD_ID {
                    // The master's state: its JSON's hash.
                    let Some(d) = Sim::master_digest(nh, s.applied) else {
                        continue;
                    };
                    d
                } else {
                    let Ok(bytes) = nh.stale_read(s.shard_id, DIGEST_QUERY) else {
                        continue;
                    };
                    Digest::decode(&bytes).ok_or("undecodable digest")?
                };
                if let Some(e) = d.error {
                    return Err(format!(
                        "replica {} of {} on host {h}: {e}",
                        s.replica_id, s.shard_id
                    ));
                }
                let first = *self
                    .checker
                    .digests
                    .entry((s.shard_id, d.index))
                    .or_insert(d.hash);
                if first != d.hash {
                    return Err(format!(
                        "replica {} of {} on host {h} has state {:016x} after index {}, \
                         another replica had {first:016x}",
                        s.replica_id, s.shard_id, d.hash, d.index
                    ));
                }
            }
        }
        Ok(())
    }

    /// The running replica `replica` of `shard` on host `h`, with its
    /// NodeHost, or why it is not running there.
    fn running(
        &self,
        h: usize,
        shard: ShardId,
        replica: ReplicaId,
    ) -> Result<(&longship::NodeHost, longship::ShardInfo), String> {
        let Some(nh) = &self.hosts[h].nh else {
            return Err(format!("host {h} of {shard} is down"));
        };
        let info = nh.get_node_host_info();
        let Some(s) = info.shards.into_iter().find(|s| s.shard_id == shard) else {
            return Err(format!("replica {replica} of {shard} not running"));
        };
        if s.replica_id != replica {
            return Err(format!(
                "host {h} runs replica {} of {shard}, not {replica}",
                s.replica_id
            ));
        }
        Ok((nh, s))
    }

    /// Why the shards have not converged yet: `None` once every member of
    /// every shard runs, the shard has a leader, all members applied the
    /// same index to the same state, and witnesses follow to that index.
    pub(super) fn divergence(&self) -> Option<String> {
        for shard in &self.shards {
            let mut seen: Option<(Index, Digest)> = None;
            let mut leader = false;
            for (&replica, &h) in shard.members.iter().chain(&shard.non_voting) {
                let (nh, s) = match self.running(h, shard.id, replica) {
                    Ok(x) => x,
                    Err(why) => return Some(why),
                };
                leader |= s.is_leader;
                let Some(d) = nh
                    .stale_read(shard.id, DIGEST_QUERY)
                    .ok()
                    .and_then(|b| Digest::decode(&b))
                else {
                    return Some(format!("no digest from replica {replica} of {}", shard.id));
                };
                match &seen {
                    None => seen = Some((s.applied, d)),
                    Some((applied, digest)) => {
                        if *applied != s.applied || *digest != d {
                            return Some(format!(
                                "{}: replica {replica} applied {} ({:016x}), another {} ({:016x})",
                                shard.id, s.applied, d.hash, applied, digest.hash
                            ));
                        }
                    }
                }
            }
            // Witnesses hold no state to compare.
            for (&replica, &h) in &shard.witnesses {
                let s = match self.running(h, shard.id, replica) {
                    Ok((_, s)) => s,
                    Err(why) => return Some(why),
                };
                if let Some((applied, _)) = &seen
                    && s.applied != *applied
                {
                    return Some(format!(
                        "{}: witness {replica} applied {}, the others {applied}",
                        shard.id, s.applied
                    ));
                }
            }
            if !leader {
                return Some(format!("{} has no leader among its members", shard.id));
            }
        }
        None
    }

    /// Runs the final linearizable reads of every key.
    pub(super) fn final_reads(&mut self, deadline: u64) -> Result<(), String> {
        self.start_final_reads();
        while self.probes.iter().any(|p| !p.done()) {
            if self.ticks >= deadline {
                return Err(format!(
                    "final reads did not complete within {} ticks of healing",
                    self.cfg.heal_ticks_max
                ));
            }
            self.step()?;
        }
        Ok(())
    }

    /// No acknowledged write lost or applied twice (by the final values),
    /// and every shard's history linearizable, key by key.
    pub(super) fn check_histories(&mut self) -> Result<(), String> {
        for shard in &self.shards {
            let finals: BTreeMap<String, String> = self
                .finals
                .iter()
                .filter(|(k, _)| shard.keys.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            check_final_values(shard.id, &shard.history, &finals)?;
        }
        let budget = Budget {
            steps_max: self.cfg.lin_steps_max,
            time_max: None,
        };
        for si in 0..self.shards.len() {
            let shard = &self.shards[si];
            let history = prune_invisible_unknowns(&shard.history);
            match check(&KvModel, &history, budget) {
                Verdict::Linearizable => {}
                Verdict::Unknown => self.stats.lin_unknown += 1,
                Verdict::NotLinearizable {
                    key,
                    linearized_max,
                    ops,
                } => {
                    let mut text = String::new();
                    for &i in &ops {
                        text.push_str(&format!("\n    {:?}", history[i]));
                    }
                    return Err(format!(
                        "history of {} is not linearizable on key {key} (at most {linearized_max} \
                         of {} operations linearized):{text}",
                        shard.id,
                        ops.len()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Every acknowledged append is in its key's final value, unless a put
/// that may have come after it overwrote it; no append or put value appears
/// twice. Values are unique tokens ending in `,`.
fn check_final_values(
    shard: ShardId,
    history: &[crate::linearizability::Operation<KvInput, KvOutput>],
    finals: &BTreeMap<String, String>,
) -> Result<(), String> {
    for (key, value) in finals {
        let mut tokens: Vec<&str> = value.split_inclusive(',').collect();
        tokens.sort_unstable();
        if let Some(w) = tokens.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "{shard}: {key} holds {:?} twice (applied twice): {value:?}",
                w[0]
            ));
        }
    }
    for op in history {
        let (KvInput::Append { key, value }, Outcome::Returned { .. }) = (&op.input, &op.outcome)
        else {
            continue;
        };
        let Some(final_value) = finals.get(key) else {
            continue;
        };
        if final_value.contains(value.as_str()) {
            continue;
        }
        // A put that did not finish before this append began may have been
        // applied after it.
        let overwritten = history.iter().any(|p| match (&p.input, &p.outcome) {
            (KvInput::Put { key: k, .. }, Outcome::Returned { at, .. }) => {
                k == key && *at > op.call
            }
            (KvInput::Put { key: k, .. }, Outcome::Unknown) => k == key,
            _ => false,
        });
        if !overwritten {
            return Err(format!(
                "{shard}: acknowledged append {value:?} to {key} is lost (final value {final_value:?})"
            ));
        }
    }
    Ok(())
}
