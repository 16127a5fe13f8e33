//! The workload: clients (writes with sessions and retries, linearizable
//! reads), the administrator (membership changes, leader transfers,
//! snapshots) and the heal phase's tasks (progress probes, final reads).
//!
//! Nothing here blocks: every request returns a handle that is polled
//! with `try_result` once per round.

use longship::{
    Error, Index, NodeHost, ReplicaId, RequestHandle, Session, ShardId, SmResult, SnapshotOption,
    SnapshotResult,
};

use super::host::Hosted;
use super::{Phase, Sim};
use crate::kv::{append_command, get_query, put_command};
use crate::linearizability::Operation;
use crate::linearizability::Outcome;
use crate::linearizability::kv::{KvInput, KvOutput};

/// Ticks a request may take before it times out.
const REQUEST_TIMEOUT_TICKS: u64 = 30;
/// Attempts of one operation during the fault phase before the client
/// gives up on it (during healing it never gives up).
const TRIES_MAX: u32 = 8;

/// A request in flight on one host.
pub(super) struct Attempt<T> {
    host: usize,
    incarnation: u64,
    handle: RequestHandle<T>,
}

/// Whether a client de-duplicates its retries with a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientKind {
    Session,
    Noop,
}

enum ClientState {
    Idle {
        at: u64,
    },
    Registering {
        pending: Option<(Session, Attempt<SmResult>)>,
        retry_at: u64,
    },
    Writing {
        op: usize,
        cmd: Vec<u8>,
        attempt: Option<Attempt<SmResult>>,
        retry_at: u64,
        tries: u32,
    },
    Reading {
        key: String,
        call: u64,
        attempt: Option<Attempt<Index>>,
        retry_at: u64,
        tries: u32,
    },
}

/// One client: one operation at a time on one shard.
pub(super) struct Client {
    id: u64,
    shard: usize,
    kind: ClientKind,
    session: Option<Session>,
    state: ClientState,
    seq: u64,
}

impl Client {
    pub(super) fn is_idle(&self) -> bool {
        matches!(self.state, ClientState::Idle { .. })
    }

    pub(super) fn describe(&self) -> String {
        let what = match &self.state {
            ClientState::Idle { .. } => "idle".to_string(),
            ClientState::Registering { .. } => "registering a session".to_string(),
            ClientState::Writing { cmd, tries, .. } => {
                format!("writing {:?} (try {tries})", String::from_utf8_lossy(cmd))
            }
            ClientState::Reading { key, tries, .. } => format!("reading {key} (try {tries})"),
        };
        format!("client {} of shard index {}: {what}", self.id, self.shard)
    }
}

/// What the administrator of a shard is doing.
enum AdminState {
    Idle,
    /// A requested snapshot, exported to the directory if one is given.
    Snapshot(Attempt<SnapshotResult>, Option<std::path::PathBuf>),
    Change {
        change: Change,
        attempt: Option<Attempt<()>>,
        retry_at: u64,
    },
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Add {
        replica: ReplicaId,
        host: usize,
    },
    /// Add as non-voting, then promote (`Promote`).
    AddNonVoting {
        replica: ReplicaId,
        host: usize,
    },
    Promote {
        replica: ReplicaId,
        host: usize,
    },
    /// A witness (at most one per shard).
    AddWitness {
        replica: ReplicaId,
        host: usize,
    },
    Remove {
        replica: ReplicaId,
        host: usize,
    },
}

/// The administrator of one shard.
pub(super) struct Admin {
    shard: usize,
    state: AdminState,
    /// Ordered changes: the membership the change in progress is based on,
    /// read at its first attempt and kept across retries (so a retry after
    /// an attempt that timed out but applied is refused as stale), read
    /// again after a stale refusal.
    base: Option<Index>,
}

impl Admin {
    pub(super) fn is_idle(&self) -> bool {
        matches!(self.state, AdminState::Idle)
    }

    pub(super) fn describe(&self) -> String {
        let what = match &self.state {
            AdminState::Idle => "idle".to_string(),
            AdminState::Snapshot(..) => "snapshot".to_string(),
            AdminState::Change { change, .. } => format!("{change:?}"),
        };
        format!("admin of shard index {}: {what}", self.shard)
    }
}

/// A heal-phase task.
enum TaskKind {
    /// Write `value` to `key` (outside the checked history).
    ProbeWrite {
        key: String,
        value: String,
    },
    /// Read `key` linearizably; it must hold `value`.
    ProbeRead {
        key: String,
        value: String,
    },
    /// Read `key` linearizably into the history.
    FinalRead {
        key: String,
        call: u64,
    },
    Done,
}

enum TaskAttempt {
    Write(Attempt<SmResult>),
    Read(Attempt<Index>),
}

/// A heal-phase task of one shard.
pub(super) struct Probe {
    shard: usize,
    kind: TaskKind,
    attempt: Option<TaskAttempt>,
    retry_at: u64,
    tries: u32,
}

impl Probe {
    pub(super) fn done(&self) -> bool {
        matches!(self.kind, TaskKind::Done)
    }

    pub(super) fn describe(&self) -> String {
        let what = match &self.kind {
            TaskKind::ProbeWrite { key, .. } => format!("probe write of {key}"),
            TaskKind::ProbeRead { key, .. } => format!("probe read of {key}"),
            TaskKind::FinalRead { key, .. } => format!("final read of {key}"),
            TaskKind::Done => "done".into(),
        };
        format!("shard index {}: {what} (try {})", self.shard, self.tries)
    }
}

fn backoff(sim: &mut Sim) -> u64 {
    sim.round + 1 + sim.rng.below(2 * super::ROUNDS_PER_TICK)
}

impl Sim {
    pub(super) fn make_clients(&mut self) {
        let mut id = 0;
        for si in 0..self.shards.len() {
            for _ in 0..self.cfg.clients_per_shard {
                id += 1;
                // Without a session a forwarded proposal that the network
                // duplicates is appended twice (at-least-once): no-op
                // session writers only where the network never duplicates.
                let noop_ok = self.plan.net.duplicate == 0.0;
                let kind = if !noop_ok || self.rng.chance(0.75) {
                    ClientKind::Session
                } else {
                    ClientKind::Noop
                };
                self.clients.push(Client {
                    id,
                    shard: si,
                    kind,
                    session: None,
                    state: ClientState::Idle { at: 0 },
                    seq: 0,
                });
            }
            self.admins.push(Admin {
                shard: si,
                state: AdminState::Idle,
                base: None,
            });
        }
        self.net.faults = self.plan.net;
    }

    /// A random running host with a replica of the shard.
    fn pick_host(&mut self, si: usize) -> Option<usize> {
        let shard = self.shards[si].id;
        let hosts: Vec<usize> = (0..self.hosts.len())
            .filter(|&h| self.hosts[h].runs(shard))
            .collect();
        if hosts.is_empty() {
            return None;
        }
        Some(hosts[self.rng.below(hosts.len() as u64) as usize])
    }

    /// The NodeHost of an attempt, if it still runs the incarnation the
    /// request was made on.
    fn attempt_host<T>(&self, a: &Attempt<T>) -> Option<&NodeHost> {
        let slot = &self.hosts[a.host];
        if slot.incarnation != a.incarnation {
            return None;
        }
        slot.nh.as_ref()
    }

    /// Whether a member of shard `si` runs under a recovery guard, or is on
    /// a host whose log was damaged (or held a guard) and has not started
    /// since. A guarded replica that the newest membership any running
    /// replica knows no longer holds does not count: it lost the very entry
    /// that removed it, so no leader will ever talk to it again and its
    /// guard stays for good, which must not stop the shard's membership
    /// changes for good (seeds 13213884 and 13216712).
    fn shard_recovering(&self, si: usize) -> bool {
        let shard = self.shards[si].id;
        let infos: Vec<longship::ShardInfo> = self
            .hosts
            .iter()
            .filter_map(|slot| slot.nh.as_ref())
            .flat_map(|nh| nh.get_node_host_info().shards)
            .filter(|s| s.shard_id == shard)
            .collect();
        let newest = infos
            .iter()
            .max_by_key(|s| s.membership.config_change_id)
            .map(|s| &s.membership);
        let member = |id: ReplicaId| {
            newest.is_none_or(|m| {
                m.voters.contains_key(&id)
                    || m.non_votings.contains_key(&id)
                    || m.witnesses.contains_key(&id)
            })
        };
        let down = self
            .hosts
            .iter()
            .any(|slot| slot.nh.is_none() && slot.damaged && slot.hosted.contains_key(&shard));
        down || infos
            .iter()
            .any(|s| s.recovery_guard.is_some() && member(s.replica_id))
    }

    fn attempt<T>(
        &mut self,
        si: usize,
        request: impl FnOnce(&NodeHost, ShardId) -> longship::Result<RequestHandle<T>>,
    ) -> Option<Attempt<T>> {
        let h = self.pick_host(si)?;
        let shard = self.shards[si].id;
        let slot = &self.hosts[h];
        let nh = slot.nh.as_ref()?;
        let handle = request(nh, shard).ok()?;
        Some(Attempt {
            host: h,
            incarnation: slot.incarnation,
            handle,
        })
    }

    pub(super) fn poll_clients(&mut self) -> Result<(), String> {
        for ci in 0..self.clients.len() {
            let state = std::mem::replace(&mut self.clients[ci].state, ClientState::Idle { at: 0 });
            let next = self.poll_client(ci, state)?;
            self.clients[ci].state = next;
        }
        Ok(())
    }

    fn poll_client(&mut self, ci: usize, state: ClientState) -> Result<ClientState, String> {
        let si = self.clients[ci].shard;
        let timeout = self.timeout(REQUEST_TIMEOUT_TICKS);
        let patient = self.phase == Phase::Heal;
        Ok(match state {
            ClientState::Idle { at } => {
                if self.phase != Phase::Faults || self.round < at || self.stats.ops >= self.cfg.ops
                {
                    ClientState::Idle { at }
                } else if self.clients[ci].kind == ClientKind::Session
                    && self.clients[ci].session.is_none()
                {
                    ClientState::Registering {
                        pending: None,
                        retry_at: self.round,
                    }
                } else {
                    self.new_op(ci)
                }
            }
            ClientState::Registering { pending, retry_at } => match pending {
                None if self.round < retry_at => ClientState::Registering { pending, retry_at },
                None => {
                    let mut session = None;
                    let attempt = self.attempt(si, |nh, shard| {
                        let (s, h) = nh.register_session(shard, timeout)?;
                        session = Some(s);
                        Ok(h)
                    });
                    match (session, attempt) {
                        (Some(s), Some(a)) => ClientState::Registering {
                            pending: Some((s, a)),
                            retry_at,
                        },
                        _ => ClientState::Registering {
                            pending: None,
                            retry_at: backoff(self),
                        },
                    }
                }
                Some((session, a)) => match a.handle.try_result() {
                    None => ClientState::Registering {
                        pending: Some((session, a)),
                        retry_at,
                    },
                    Some(Ok(_)) => {
                        self.trace_event("registered", self.clients[ci].id, session.client_id);
                        self.clients[ci].session = Some(session);
                        ClientState::Idle { at: self.round }
                    }
                    // A new registration; the old one is abandoned.
                    Some(Err(_)) => ClientState::Registering {
                        pending: None,
                        retry_at: backoff(self),
                    },
                },
            },
            ClientState::Writing {
                op,
                cmd,
                attempt,
                retry_at,
                tries,
            } => match attempt {
                None if self.round < retry_at => ClientState::Writing {
                    op,
                    cmd,
                    attempt,
                    retry_at,
                    tries,
                },
                None if tries >= TRIES_MAX && !patient => self.give_up_write(ci, op),
                None => {
                    let session = self.client_session(ci);
                    let c = cmd.clone();
                    let attempt = self.attempt(si, |nh, _| nh.propose(&session, c, timeout));
                    let retry_at = if attempt.is_some() {
                        retry_at
                    } else {
                        backoff(self)
                    };
                    ClientState::Writing {
                        op,
                        cmd,
                        attempt,
                        retry_at,
                        tries: tries + 1,
                    }
                }
                Some(a) => match self.poll_write(ci, &a, &cmd) {
                    None => ClientState::Writing {
                        op,
                        cmd,
                        attempt: Some(a),
                        retry_at,
                        tries,
                    },
                    Some(Ok(_)) => {
                        let at = self.now();
                        let shard = &mut self.shards[si];
                        shard.history[op].outcome = Outcome::Returned {
                            output: KvOutput::Done,
                            at,
                        };
                        if let Some(s) = &mut self.clients[ci].session {
                            s.proposal_completed();
                        }
                        self.stats.ops_ok += 1;
                        self.trace_event("write-ok", op as u64, at);
                        ClientState::Idle {
                            at: self.next_op_round(),
                        }
                    }
                    Some(Err(e)) => {
                        self.trace_event("write-err", op as u64, error_code(&e));
                        let definite = matches!(e, Error::Dropped { .. } | Error::SystemBusy);
                        match e {
                            Error::InvalidSession => {
                                return Err(format!(
                                    "client {} (shard {}): a registered session was refused \
                                     (proposal {:?})",
                                    self.clients[ci].id,
                                    self.shards[si].id,
                                    String::from_utf8_lossy(&cmd)
                                ));
                            }
                            Error::Rejected(why) => {
                                return Err(format!(
                                    "client {}: a proposal was rejected: {why}",
                                    self.clients[ci].id
                                ));
                            }
                            _ => {}
                        }
                        if !definite && self.clients[ci].kind == ClientKind::Noop {
                            // Without a session a retry could apply twice.
                            self.give_up_write(ci, op)
                        } else {
                            ClientState::Writing {
                                op,
                                cmd,
                                attempt: None,
                                retry_at: backoff(self),
                                tries,
                            }
                        }
                    }
                },
            },
            ClientState::Reading {
                key,
                call,
                attempt,
                retry_at,
                tries,
            } => match attempt {
                None if self.round < retry_at => ClientState::Reading {
                    key,
                    call,
                    attempt,
                    retry_at,
                    tries,
                },
                // A read that never completed is left out of the history.
                None if tries >= TRIES_MAX && !patient => ClientState::Idle { at: self.round },
                None => {
                    let attempt = self.attempt(si, |nh, shard| nh.read_index(shard, timeout));
                    let retry_at = if attempt.is_some() {
                        retry_at
                    } else {
                        backoff(self)
                    };
                    ClientState::Reading {
                        key,
                        call,
                        attempt,
                        retry_at,
                        tries: tries + 1,
                    }
                }
                Some(a) => match a.handle.try_result() {
                    None => ClientState::Reading {
                        key,
                        call,
                        attempt: Some(a),
                        retry_at,
                        tries,
                    },
                    Some(result) => {
                        let shard = self.shards[si].id;
                        let value = match result {
                            Ok(_) => self
                                .attempt_host(&a)
                                .and_then(|nh| nh.read_local(shard, &get_query(&key)).ok()),
                            Err(_) => None,
                        };
                        match value {
                            Some(bytes) => {
                                let value = String::from_utf8_lossy(&bytes).into_owned();
                                let at = self.now();
                                self.trace.write(value.as_bytes());
                                self.record_read(si, self.clients[ci].id, key, value, call, at);
                                self.stats.ops_ok += 1;
                                ClientState::Idle {
                                    at: self.next_op_round(),
                                }
                            }
                            None => ClientState::Reading {
                                key,
                                call,
                                attempt: None,
                                retry_at: backoff(self),
                                tries,
                            },
                        }
                    }
                },
            },
        })
    }

    /// When a client that just finished an operation invokes its next:
    /// soon, and in master mode after a think time that spreads the
    /// operations over the whole fault phase.
    fn next_op_round(&mut self) -> u64 {
        let mut at = self.round + self.rng.below(3);
        if let Some(m) = &self.master {
            at += self.rng.below(m.plan.think_rounds_max);
        }
        at
    }

    /// The outcome of a write attempt, if it has one (logged with
    /// `LONGSHIP_SIM_LOG`).
    fn poll_write(
        &self,
        ci: usize,
        a: &Attempt<SmResult>,
        cmd: &[u8],
    ) -> Option<longship::Result<SmResult>> {
        let r = a.handle.try_result()?;
        if self.log {
            eprintln!(
                "  client {} write {:?} on host {}: {:?}",
                self.clients[ci].id,
                String::from_utf8_lossy(cmd),
                a.host,
                r.as_ref().map(|_| ())
            );
        }
        Some(r)
    }

    fn record_read(
        &mut self,
        si: usize,
        client: u64,
        key: String,
        value: String,
        call: u64,
        at: u64,
    ) {
        self.shards[si].history.push(Operation::returned(
            client,
            KvInput::Get { key },
            call,
            KvOutput::Value(value),
            at,
        ));
    }

    fn client_session(&self, ci: usize) -> Session {
        let c = &self.clients[ci];
        match &c.session {
            Some(s) => s.clone(),
            None => Session::noop(self.shards[c.shard].id),
        }
    }

    /// The write's outcome stays unknown; the client moves on (a session
    /// client to its next series id).
    fn give_up_write(&mut self, ci: usize, op: usize) -> ClientState {
        self.stats.writes_unknown += 1;
        if let Some(s) = &mut self.clients[ci].session {
            s.proposal_completed();
        }
        self.trace_event("write-unknown", op as u64, 0);
        ClientState::Idle { at: self.round }
    }

    /// Invokes a new operation: 45% reads, 40% appends, 15% puts.
    fn new_op(&mut self, ci: usize) -> ClientState {
        self.stats.ops += 1;
        let si = self.clients[ci].shard;
        let key = {
            let keys = &self.shards[si].keys;
            keys[self.rng.below(keys.len() as u64) as usize].clone()
        };
        let c = &mut self.clients[ci];
        c.seq += 1;
        let (id, seq) = (c.id, c.seq);
        let roll = self.rng.below(100);
        let call = self.now();
        self.trace_event("invoke", id, roll);
        if self.log {
            eprintln!(
                "  client {id} ({:?}) op {seq:x} on {key} roll {roll} call {call}",
                self.clients[ci].kind
            );
        }
        if roll < 45 {
            return ClientState::Reading {
                key,
                call,
                attempt: None,
                retry_at: self.round,
                tries: 0,
            };
        }
        let (input, cmd) = if roll < 85 {
            let value = format!("{id:x}.{seq:x},");
            let cmd = append_command(&key, &value);
            (KvInput::Append { key, value }, cmd)
        } else {
            let value = format!("P{id:x}.{seq:x},");
            let cmd = put_command(&key, &value);
            (KvInput::Put { key, value }, cmd)
        };
        let history = &mut self.shards[si].history;
        history.push(Operation::unknown(id, input, call));
        ClientState::Writing {
            op: history.len() - 1,
            cmd,
            attempt: None,
            retry_at: self.round,
            tries: 0,
        }
    }

    // ------------------------------------------------------------ admin

    /// Asks the shard's leader to hand leadership to another member.
    pub(super) fn request_transfer(&mut self, si: usize) {
        let shard = self.shards[si].id;
        let members: Vec<ReplicaId> = self.shards[si].members.keys().copied().collect();
        for slot in &self.hosts {
            let Some(nh) = &slot.nh else { continue };
            let Some(hosted) = slot.hosted.get(&shard) else {
                continue;
            };
            let leads = nh
                .get_leader(shard)
                .is_ok_and(|l| l.is_some_and(|l| l.replica_id == hosted.cfg.replica_id));
            if !leads {
                continue;
            }
            let targets: Vec<ReplicaId> = members
                .iter()
                .copied()
                .filter(|&r| r != hosted.cfg.replica_id)
                .collect();
            if targets.is_empty() {
                return;
            }
            let target = targets[self.rng.below(targets.len() as u64) as usize];
            let _ = nh.request_leader_transfer(shard, target);
            self.stats.transfers += 1;
            self.trace_event("transfer", shard.0, target.0);
            return;
        }
    }

    /// Requests a snapshot on a random replica of the shard.
    pub(super) fn start_snapshot(&mut self, si: usize) {
        if !self.admins[si].is_idle() {
            return;
        }
        let timeout = self.timeout(REQUEST_TIMEOUT_TICKS);
        let overhead = self.rng.below(8);
        // One in four is exported too (on the host's own disk), and the
        // export checked once it completes.
        let export = self
            .rng
            .chance(0.25)
            .then(|| std::path::PathBuf::from(format!("/exports/{si}-{}", self.round)));
        let export_path = export.clone();
        let attempt = self.attempt(si, |nh, shard| {
            // An export compacts nothing: it takes no overhead.
            let compaction_overhead = export_path.is_none().then_some(overhead);
            let opt = SnapshotOption {
                export_path,
                compaction_overhead,
            };
            nh.request_snapshot(shard, opt, timeout)
        });
        if let Some(a) = attempt {
            self.stats.snapshots += 1;
            self.trace_event("snapshot", si as u64, a.host as u64);
            self.admins[si].state = AdminState::Snapshot(a, export);
        }
    }

    /// Adds a replica on a host without one (up to four voters, witnesses
    /// included), or removes one (down to three).
    pub(super) fn start_membership_change(&mut self, si: usize) -> Result<(), String> {
        if !self.admins[si].is_idle() {
            return Ok(());
        }
        let shard = self.shards[si].id;
        let voters = self.shards[si].members.len() + self.shards[si].witnesses.len();
        let free: Vec<usize> = (0..self.hosts.len())
            .filter(|&h| !self.hosts[h].hosted.contains_key(&shard))
            .collect();
        let change = if voters <= 3 && !free.is_empty() {
            let host = free[self.rng.below(free.len() as u64) as usize];
            let replica = ReplicaId(self.shards[si].next_replica);
            self.shards[si].next_replica += 1;
            // Witnesses: at most one, so two replicas always hold data.
            let witness = self.shards[si].witnesses.is_empty() && self.rng.chance(0.3);
            let non_voting = !witness && self.rng.chance(0.5);
            let cfg = longship::Config {
                replica_id: replica,
                is_non_voting: non_voting,
                is_witness: witness,
                ..self.shards[si].config.clone()
            };
            let hosted = Hosted { cfg, initial: None };
            self.hosts[host].hosted.insert(shard, hosted.clone());
            if let Some(nh) = &self.hosts[host].nh {
                let faults_before = self.hosts[host].fs.faults_injected();
                if let Err(e) = super::host::start_replica(nh, &hosted) {
                    // An injected fault now, or one that failed the log
                    // storage earlier: the host is crashed and restarts.
                    if self.hosts[host].fs.faults_injected() == faults_before
                        && nh.log_storage_failure().is_none()
                    {
                        return Err(format!(
                            "joining replica {replica} of {shard} did not start: {e}"
                        ));
                    }
                    let delay = super::ROUNDS_PER_TICK * (1 + self.rng.below(10));
                    self.crash_host(host, delay)?;
                }
            }
            if witness {
                Change::AddWitness { replica, host }
            } else if non_voting {
                Change::AddNonVoting { replica, host }
            } else {
                Change::Add { replica, host }
            }
        } else if voters > 3 {
            let members: Vec<(ReplicaId, usize)> = self.shards[si]
                .members
                .iter()
                .chain(&self.shards[si].witnesses)
                .map(|(&r, &h)| (r, h))
                .collect();
            let (replica, host) = members[self.rng.below(members.len() as u64) as usize];
            Change::Remove { replica, host }
        } else {
            return Ok(());
        };
        self.trace_event("membership", si as u64, 0);
        self.admins[si].state = AdminState::Change {
            change,
            attempt: None,
            retry_at: self.round,
        };
        self.admins[si].base = None;
        Ok(())
    }

    pub(super) fn poll_admins(&mut self) -> Result<(), String> {
        for si in 0..self.admins.len() {
            let state = std::mem::replace(&mut self.admins[si].state, AdminState::Idle);
            let next = self.poll_admin(si, state)?;
            self.admins[si].state = next;
        }
        Ok(())
    }

    fn poll_admin(&mut self, si: usize, state: AdminState) -> Result<AdminState, String> {
        let timeout = self.timeout(REQUEST_TIMEOUT_TICKS);
        Ok(match state {
            AdminState::Idle => AdminState::Idle,
            AdminState::Snapshot(a, export) => match a.handle.try_result() {
                None => AdminState::Snapshot(a, export),
                Some(Ok(done)) => {
                    if let Some(dir) = export {
                        self.check_export(si, &a, &dir, &done)?;
                    }
                    AdminState::Idle
                }
                Some(Err(_)) => AdminState::Idle,
            },
            AdminState::Change {
                change,
                attempt,
                retry_at,
            } => match attempt {
                None if self.round < retry_at => AdminState::Change {
                    change,
                    attempt,
                    retry_at,
                },
                // No membership change while a replica of the shard
                // recovers from a damaged log: the change could leave the
                // entry it lost on no full replica (docs/recovery.md), a
                // stop by design that a run must not count as a failure.
                None if self.shard_recovering(si) => AdminState::Change {
                    change,
                    attempt,
                    retry_at: self.round + super::ROUNDS_PER_TICK,
                },
                None => {
                    let addr = match change {
                        Change::Add { host, .. }
                        | Change::AddNonVoting { host, .. }
                        | Change::AddWitness { host, .. }
                        | Change::Promote { host, .. } => self.hosts[host].addr.clone(),
                        Change::Remove { .. } => String::new(),
                    };
                    let ordered = self.shards[si].config.ordered_config_change;
                    let kept = self.admins[si].base;
                    let mut read = None;
                    let attempt = self.attempt(si, |nh, shard| {
                        // The membership this change is based on: kept from
                        // the first attempt, or as the replica asked has
                        // applied it.
                        let base = match (ordered, kept) {
                            (false, _) => Index(0),
                            (true, Some(b)) => b,
                            (true, None) => nh
                                .get_node_host_info()
                                .shards
                                .iter()
                                .find(|s| s.shard_id == shard)
                                .map_or(Index(0), |s| s.config_change_id),
                        };
                        read = Some(base);
                        match change {
                            // Adding a voter that is non-voting promotes it.
                            Change::Add { replica, .. } | Change::Promote { replica, .. } => {
                                nh.request_add_replica(shard, replica, addr, base, timeout)
                            }
                            Change::AddNonVoting { replica, .. } => {
                                nh.request_add_non_voting(shard, replica, addr, base, timeout)
                            }
                            Change::AddWitness { replica, .. } => {
                                nh.request_add_witness(shard, replica, addr, base, timeout)
                            }
                            Change::Remove { replica, .. } => {
                                nh.request_delete_replica(shard, replica, base, timeout)
                            }
                        }
                    });
                    if ordered && attempt.is_some() {
                        self.admins[si].base = read;
                    }
                    let retry_at = if attempt.is_some() {
                        retry_at
                    } else {
                        backoff(self)
                    };
                    AdminState::Change {
                        change,
                        attempt,
                        retry_at,
                    }
                }
                Some(a) => match a.handle.try_result() {
                    None => AdminState::Change {
                        change,
                        attempt: Some(a),
                        retry_at,
                    },
                    Some(result) => {
                        let done = match (&change, &result) {
                            (_, Ok(())) => true,
                            // Based on a membership that changed since (an
                            // earlier attempt of this change applied, or the
                            // replica asked lagged): ask again on a fresh base.
                            (_, Err(Error::StaleConfigChange { .. }))
                                if self.shards[si].config.ordered_config_change =>
                            {
                                self.stats.stale_config_changes += 1;
                                self.admins[si].base = None;
                                false
                            }
                            (
                                Change::Add { .. }
                                | Change::AddNonVoting { .. }
                                | Change::AddWitness { .. }
                                | Change::Promote { .. },
                                Err(Error::Rejected(why)),
                            ) => {
                                if !why.contains("already a member") {
                                    return Err(format!("{change:?} rejected: {why}"));
                                }
                                true
                            }
                            (Change::Remove { .. }, Err(Error::ReplicaRemoved(_))) => true,
                            (_, Err(Error::ReplicaRemoved(_) | Error::Rejected(_))) => {
                                return Err(format!("{change:?} refused: {result:?}"));
                            }
                            _ => false,
                        };
                        if done {
                            self.finish_change(si, change);
                            match change {
                                Change::AddNonVoting { replica, host } => AdminState::Change {
                                    change: Change::Promote { replica, host },
                                    attempt: None,
                                    retry_at: backoff(self),
                                },
                                _ => AdminState::Idle,
                            }
                        } else {
                            AdminState::Change {
                                change,
                                attempt: None,
                                retry_at: backoff(self),
                            }
                        }
                    }
                },
            },
        })
    }

    /// A completed export holds the snapshot at `index` whole: importing it
    /// into a scratch store checks its metadata, files, lengths and
    /// checksums. (Skipped if the host restarted since, or if the check
    /// itself met an injected I/O error.) The export is removed after.
    fn check_export(
        &mut self,
        si: usize,
        a: &Attempt<SnapshotResult>,
        dir: &std::path::Path,
        done: &SnapshotResult,
    ) -> Result<(), String> {
        let index = done.index;
        use longship_storage::snapshot::SnapshotStore;
        use longship_storage::vfs::{FileSystem, MemFs};
        let slot = &self.hosts[a.host];
        if slot.incarnation != a.incarnation || slot.nh.is_none() {
            return Ok(());
        }
        let shard = self.shards[si].id;
        let src = dir.join(format!("snapshot-{:016x}", index.0));
        if done.export_dir.as_deref() != Some(src.as_path()) {
            return Err(format!(
                "export of {shard} at {index} named {:?}, written to {}",
                done.export_dir,
                src.display()
            ));
        }
        let faults = slot.fs.faults_injected();
        let scratch = SnapshotStore::open(
            std::sync::Arc::new(MemFs::new()),
            std::path::Path::new("/scratch"),
            shard,
            ReplicaId(1),
        )
        .map_err(|e| format!("scratch store: {e}"))?;
        let res = scratch.import_from(&slot.fs, &src);
        if slot.fs.faults_injected() == faults {
            match res {
                Ok(info) if info.meta.index == index => {}
                Ok(info) => {
                    return Err(format!(
                        "export of {shard} at {index} holds the snapshot at {}",
                        info.meta.index
                    ));
                }
                Err(e) => return Err(format!("export of {shard} at {index} is damaged: {e}")),
            }
        }
        self.stats.exports += 1;
        let _ = slot.fs.remove_dir_all(dir);
        Ok(())
    }

    fn finish_change(&mut self, si: usize, change: Change) {
        self.stats.membership_changes += 1;
        let shard = self.shards[si].id;
        match change {
            Change::Add { replica, host } | Change::Promote { replica, host } => {
                self.shards[si].non_voting.remove(&replica);
                self.shards[si].members.insert(replica, host);
                self.trace_event("added", shard.0, replica.0);
            }
            Change::AddNonVoting { replica, host } => {
                self.shards[si].non_voting.insert(replica, host);
                self.trace_event("added-non-voting", shard.0, replica.0);
            }
            Change::AddWitness { replica, host } => {
                self.shards[si].witnesses.insert(replica, host);
                self.trace_event("added-witness", shard.0, replica.0);
            }
            Change::Remove { replica, host } => {
                self.shards[si].members.remove(&replica);
                self.shards[si].witnesses.remove(&replica);
                self.hosts[host].hosted.remove(&shard);
                if let Some(nh) = &self.hosts[host].nh {
                    let _ = nh.stop_replica(shard, replica);
                }
                self.trace_event("removed", shard.0, replica.0);
            }
        }
    }

    // ------------------------------------------------------------ heal tasks

    /// One probe per shard: a new write that must commit and be read back.
    pub(super) fn start_probes(&mut self) {
        self.probes = (0..self.shards.len())
            .map(|si| Probe {
                shard: si,
                kind: TaskKind::ProbeWrite {
                    key: format!("s{}probe", self.shards[si].id.0),
                    value: format!("probe{}", self.round),
                },
                attempt: None,
                retry_at: self.round,
                tries: 0,
            })
            .collect();
    }

    /// A final linearizable read of every key, into the histories.
    pub(super) fn start_final_reads(&mut self) {
        let mut probes = Vec::new();
        for si in 0..self.shards.len() {
            for key in self.shards[si].keys.clone() {
                let call = self.now();
                probes.push(Probe {
                    shard: si,
                    kind: TaskKind::FinalRead { key, call },
                    attempt: None,
                    retry_at: self.round,
                    tries: 0,
                });
            }
        }
        self.probes = probes;
    }

    pub(super) fn poll_probes(&mut self) -> Result<(), String> {
        for pi in 0..self.probes.len() {
            self.poll_probe(pi)?;
        }
        Ok(())
    }

    fn poll_probe(&mut self, pi: usize) -> Result<(), String> {
        let timeout = self.timeout(REQUEST_TIMEOUT_TICKS);
        let si = self.probes[pi].shard;
        let shard = self.shards[si].id;
        let Some(attempt) = self.probes[pi].attempt.take() else {
            if self.round < self.probes[pi].retry_at || self.probes[pi].done() {
                return Ok(());
            }
            self.probes[pi].tries += 1;
            let attempt = match &self.probes[pi].kind {
                TaskKind::ProbeWrite { key, value } => {
                    let cmd = put_command(key, value);
                    let session = Session::noop(shard);
                    self.attempt(si, |nh, _| nh.propose(&session, cmd, timeout))
                        .map(TaskAttempt::Write)
                }
                TaskKind::ProbeRead { .. } | TaskKind::FinalRead { .. } => self
                    .attempt(si, |nh, shard| nh.read_index(shard, timeout))
                    .map(TaskAttempt::Read),
                TaskKind::Done => None,
            };
            if attempt.is_none() {
                self.probes[pi].retry_at = backoff(self);
            }
            self.probes[pi].attempt = attempt;
            return Ok(());
        };
        let value = match &attempt {
            TaskAttempt::Write(a) => a.handle.try_result().map(|r| r.map(|_| None)),
            TaskAttempt::Read(a) => a.handle.try_result().map(|r| {
                r.and_then(|_| {
                    let key = match &self.probes[pi].kind {
                        TaskKind::ProbeRead { key, .. } | TaskKind::FinalRead { key, .. } => key,
                        _ => unreachable!("reads belong to read tasks"),
                    };
                    self.attempt_host(a)
                        .ok_or(Error::ShardClosed)
                        .and_then(|nh| nh.read_local(shard, &get_query(key)))
                        .map(Some)
                })
            }),
        };
        let Some(outcome) = value else {
            self.probes[pi].attempt = Some(attempt);
            return Ok(());
        };
        let Ok(read) = outcome else {
            self.probes[pi].retry_at = backoff(self);
            return Ok(());
        };
        let kind = std::mem::replace(&mut self.probes[pi].kind, TaskKind::Done);
        self.probes[pi].tries = 0;
        match kind {
            TaskKind::ProbeWrite { key, value } => {
                self.probes[pi].kind = TaskKind::ProbeRead { key, value };
                self.probes[pi].retry_at = self.round;
            }
            TaskKind::ProbeRead { key, value } => {
                let seen = String::from_utf8_lossy(&read.unwrap_or_default()).into_owned();
                if seen != value {
                    return Err(format!(
                        "{shard}: acknowledged probe write {key}={value} not seen by a \
                         linearizable read (saw {seen:?})"
                    ));
                }
            }
            TaskKind::FinalRead { key, call } => {
                let seen = String::from_utf8_lossy(&read.unwrap_or_default()).into_owned();
                let at = self.now();
                self.trace.write(seen.as_bytes());
                self.record_read(si, 0, key.clone(), seen.clone(), call, at);
                self.finals.insert(key, seen);
            }
            TaskKind::Done => {}
        }
        Ok(())
    }
}

/// A number for an error, for the trace.
fn error_code(e: &Error) -> u64 {
    match e {
        Error::Timeout => 1,
        Error::Dropped { .. } => 2,
        Error::SystemBusy => 3,
        Error::ShardClosed => 4,
        Error::Stopped => 5,
        Error::ShardNotFound(_) => 6,
        _ => 99,
    }
}
