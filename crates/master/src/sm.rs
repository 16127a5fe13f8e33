//! The master shard's state machine: applies ticks, reports and shard
//! creations to a [`MasterState`] deterministically.

use std::io::{Read, Write};

use longship::{SmEntry, SmError, StateMachine, StopFlag};

use crate::decide::{apply_decisions, decide, pick_hosts, requests_for};
use crate::model::{Command, HostRecord, MasterConfig, MasterState, Op, ShardRecord};

/// Result value of a command that succeeded.
pub const RESULT_OK: u64 = 0;
/// Result value of a command refused (the result's data says why).
pub const RESULT_REFUSED: u64 = 1;

/// Most replicas one report may list; longer lists are cut (a NodeHost
/// sends at most `longship::MAX_REPORTED_REPLICAS`).
pub const MAX_REPORT_REPLICAS: usize = 4096;

/// Most replicas a created shard may have.
pub const MAX_SHARD_REPLICAS: u32 = 7;

/// The master's [`StateMachine`]: a [`MasterState`] in memory, JSON
/// snapshots.
pub struct MasterStateMachine {
    state: MasterState,
}

impl MasterStateMachine {
    /// An empty master deciding with `config`.
    pub fn new(config: MasterConfig) -> MasterStateMachine {
        MasterStateMachine {
            state: MasterState::new(config),
        }
    }

    /// The state (for tests).
    pub fn state(&self) -> &MasterState {
        &self.state
    }

    /// Applies one command; returns (value, data) of its result.
    pub fn apply(&mut self, cmd: Command) -> (u64, Vec<u8>) {
        apply_command(&mut self.state, cmd)
    }
}

/// Applies `cmd` to `s`: the whole of the master's replicated logic.
pub fn apply_command(s: &mut MasterState, cmd: Command) -> (u64, Vec<u8>) {
    match cmd {
        Command::Tick { elapsed_ms, first } => {
            s.now_ms += elapsed_ms.min(s.config.max_tick_ms);
            let now = s.now_ms;
            if first {
                s.leader_since_ms = now;
            }
            let decisions = decide(s, now);
            apply_decisions(s, now, &decisions);
            (RESULT_OK, Vec::new())
        }
        Command::Report(mut report) => {
            if report.deployment_id != s.config.deployment_id {
                return (
                    RESULT_REFUSED,
                    format!(
                        "the master manages deployment {}, not {}",
                        s.config.deployment_id, report.deployment_id
                    )
                    .into_bytes(),
                );
            }
            report.replicas.truncate(MAX_REPORT_REPLICAS);
            report.stored.truncate(MAX_REPORT_REPLICAS);
            // Sorted by shard, one replica per shard (a host runs one
            // replica of a shard): `decide::reported` searches them.
            report.replicas.sort_by_key(|r| r.shard);
            report.replicas.dedup_by_key(|r| r.shard);
            let host = report.host.clone();
            // A host declared dead that reports again is alive; the
            // replicas removed meanwhile are deleted by `requests_for`.
            let draining = s.hosts.get(&host).is_some_and(|h| h.draining);
            s.hosts.insert(
                host.clone(),
                HostRecord {
                    last_seen_ms: s.now_ms,
                    dead: false,
                    draining,
                    report,
                },
            );
            let requests = requests_for(s, &host);
            let data = serde_json::to_vec(&requests).expect("requests serialise");
            (RESULT_OK, data)
        }
        Command::AdoptShard {
            shard,
            desired,
            voters,
            removed,
        } => {
            if s.shards.contains_key(&shard) {
                return (RESULT_REFUSED, b"the shard is managed already".to_vec());
            }
            if voters.is_empty() || desired == 0 || desired > MAX_SHARD_REPLICAS {
                return (
                    RESULT_REFUSED,
                    b"a shard needs voters and 1 to 7 replicas".to_vec(),
                );
            }
            let next = voters
                .keys()
                .chain(removed.iter())
                .max()
                .copied()
                .unwrap_or(0)
                + 1;
            s.shards.insert(
                shard,
                ShardRecord {
                    desired,
                    placement: voters,
                    next_replica_id: next,
                    removed,
                },
            );
            (RESULT_OK, Vec::new())
        }
        Command::Drain { host, drain } => match s.hosts.get_mut(&host) {
            Some(h) => {
                h.draining = drain;
                (RESULT_OK, Vec::new())
            }
            None => (
                RESULT_REFUSED,
                format!("no host {host} ever reported").into_bytes(),
            ),
        },
        Command::CreateShard { shard, replicas } => {
            if s.shards.contains_key(&shard) {
                return (RESULT_REFUSED, b"the shard exists".to_vec());
            }
            if replicas == 0 || replicas > MAX_SHARD_REPLICAS {
                return (
                    RESULT_REFUSED,
                    format!("a shard has 1 to {MAX_SHARD_REPLICAS} replicas").into_bytes(),
                );
            }
            let Some(hosts) = pick_hosts(s, replicas as usize) else {
                return (
                    RESULT_REFUSED,
                    format!("fewer than {replicas} live hosts with room").into_bytes(),
                );
            };
            let members: std::collections::BTreeMap<u64, String> = (1..).zip(hosts).collect();
            s.shards.insert(
                shard,
                ShardRecord {
                    desired: replicas,
                    placement: members.clone(),
                    next_replica_id: u64::from(replicas) + 1,
                    removed: Default::default(),
                },
            );
            let now = s.now_ms;
            apply_decisions(
                s,
                now,
                &[crate::decide::Decision::Begin {
                    shard,
                    op: Op::Create { members },
                }],
            );
            (RESULT_OK, Vec::new())
        }
    }
}

impl StateMachine for MasterStateMachine {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            // A command that does not decode changes nothing: it is
            // refused alike on every replica.
            let (value, data) = match serde_json::from_slice::<Command>(&e.cmd) {
                Ok(cmd) => self.apply(cmd),
                Err(err) => (RESULT_REFUSED, format!("bad command: {err}").into_bytes()),
            };
            e.result.value = value;
            e.result.data = data;
        }
        Ok(())
    }

    fn lookup(&self, _query: &[u8]) -> Result<Vec<u8>, SmError> {
        serde_json::to_vec(&self.state).map_err(|e| SmError::new(e.to_string()))
    }

    fn save_snapshot(&self, w: &mut dyn Write, _stop: &StopFlag) -> Result<(), SmError> {
        serde_json::to_writer(w, &self.state).map_err(|e| SmError::new(e.to_string()))
    }

    fn recover_from_snapshot(&mut self, r: &mut dyn Read, _stop: &StopFlag) -> Result<(), SmError> {
        self.state = serde_json::from_reader(r).map_err(|e| SmError::new(e.to_string()))?;
        Ok(())
    }
}
