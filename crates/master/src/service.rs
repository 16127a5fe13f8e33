//! Running the master on NodeHosts, and the client NodeHosts report with.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use longship::{
    Config, HostReport, MasterClient, MasterClientError, MasterRequest, NodeHost, ReplicaId, Role,
    ShardId, Start,
};
use parking_lot::{Condvar, Mutex};

use crate::MASTER_SHARD_ID;
use crate::model::{
    Command, MasterConfig, MasterState, Membership, ReplicaState, Report, Request, StartKind,
};
use crate::sm::{MasterStateMachine, RESULT_OK};

/// An error of the master's admin calls.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The NodeHost call failed (no master replica here, timeout, ...).
    #[error(transparent)]
    Longship(#[from] longship::Error),
    /// The master refused the command.
    #[error("the master refused: {0}")]
    Refused(String),
    /// An answer did not decode (a master of another version).
    #[error("undecodable master answer: {0}")]
    Decode(String),
}

/// Settings of a master replica ([`MasterNode::start`]).
#[derive(Clone, Debug)]
pub struct MasterOptions {
    /// What the master decides with (identical on every master replica).
    pub config: MasterConfig,
    /// How often the master leader proposes a tick (and so decides).
    pub tick_interval: Duration,
    /// Timeout of each tick proposal.
    pub propose_timeout: Duration,
    /// Manage the master's own shard like any other: its leader adopts it
    /// (`Command::AdoptShard`, 3 replicas), so a master member lost for
    /// good is replaced on another host. Every host must then start
    /// master replicas on request ([`MasterAwareFactory`]).
    pub manage_master_shard: bool,
}

impl Default for MasterOptions {
    fn default() -> Self {
        MasterOptions {
            config: MasterConfig::default(),
            tick_interval: Duration::from_millis(200),
            propose_timeout: Duration::from_secs(2),
            manage_master_shard: false,
        }
    }
}

/// The replica config of the master shard.
pub fn master_replica_config(replica_id: ReplicaId) -> Config {
    Config {
        election_rtt: 10,
        heartbeat_rtt: 1,
        check_quorum: true,
        snapshot_entries: 1_000,
        compaction_overhead: 100,
        ..Config::new(MASTER_SHARD_ID, replica_id)
    }
}

/// One replica of the master shard and its ticker thread. While the local
/// replica leads, the ticker proposes [`Command::Tick`] every
/// `tick_interval` with the time elapsed since its previous tick (0 for
/// the first one of a leadership), so replicated time advances with the
/// leader's monotonic clock and pauses while the master has no leader.
pub struct MasterNode {
    stop: Arc<(AtomicBool, Mutex<()>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl MasterNode {
    /// Starts master replica `replica_id` on `nh` as `start` says
    /// (`Start::New` with the master members, `Start::Restart` after a
    /// reboot) and its ticker.
    pub fn start(
        nh: &Arc<NodeHost>,
        replica_id: ReplicaId,
        start: Start,
        options: MasterOptions,
    ) -> Result<MasterNode, MasterError> {
        MasterNode::start_with(nh, replica_id, start, false, options)
    }

    /// [`start`](Self::start), as a non-voting replica when `non_voting`
    /// (a replica the master adds to its own shard).
    pub fn start_with(
        nh: &Arc<NodeHost>,
        replica_id: ReplicaId,
        start: Start,
        non_voting: bool,
        options: MasterOptions,
    ) -> Result<MasterNode, MasterError> {
        let config = options.config.clone();
        nh.start_replica(
            start,
            move |_, _| Box::new(MasterStateMachine::new(config)),
            Config {
                is_non_voting: non_voting,
                ..master_replica_config(replica_id)
            },
        )?;
        let stop = Arc::new((AtomicBool::new(false), Mutex::new(()), Condvar::new()));
        let weak = Arc::downgrade(nh);
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("longship-master-tick-{}", nh.raft_address()))
            .spawn(move || tick_loop(weak, replica_id, options, s))
            .map_err(longship::Error::Io)?;
        Ok(MasterNode {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the ticker (the replica keeps running until its NodeHost
    /// stops it or closes).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.0.store(true, Ordering::Release);
        {
            let _g = self.stop.1.lock();
            self.stop.2.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MasterNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn tick_loop(
    nh: Weak<NodeHost>,
    me: ReplicaId,
    options: MasterOptions,
    stop: Arc<(AtomicBool, Mutex<()>, Condvar)>,
) {
    let interval = options.tick_interval;
    let mut ticker = MasterTicker::new(me, options);
    // The ticker's clock: this process's monotonic clock.
    let epoch = Instant::now();
    while !stop.0.load(Ordering::Acquire) {
        {
            let Some(nh) = nh.upgrade() else { return };
            let now_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            match ticker.next(&nh, now_ms) {
                Ok(Some(handle)) => {
                    let outcome = handle.wait();
                    ticker.completed(&outcome);
                }
                Ok(None) => {}
                Err(TickerStopped) => return,
            }
        }
        let mut g = stop.1.lock();
        if stop.0.load(Ordering::Acquire) {
            return;
        }
        stop.2.wait_for(&mut g, interval);
    }
}

/// The master replica's local replica was stopped (removed from the master
/// shard, or its NodeHost closed): its ticker has nothing more to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickerStopped;

/// What a [`MasterTicker`] proposed last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proposed {
    Tick,
    Adopt,
}

/// The ticker of one master replica, without a thread or a clock of its
/// own: the caller passes the time of a monotonic clock to
/// [`next`](Self::next) (milliseconds from any origin) and waits for, or
/// polls, the proposal it returns. [`MasterNode`] runs one on a thread
/// with the process's monotonic clock; the simulator runs one per master
/// replica with each simulated host's own clock.
///
/// While the local replica leads, each call proposes [`Command::Tick`] with
/// the time elapsed since the previous tick (0 and `first` for the first
/// one of a leadership); the master's replicated time is the sum of those,
/// so it never depends on clocks of different hosts agreeing, and stands
/// still while the master has no leader. The mark moves before the
/// proposal: a tick whose outcome is unknown loses its interval rather
/// than counting it twice. With [`MasterOptions::manage_master_shard`],
/// the leader first adopts the master's own shard ([`Command::AdoptShard`]).
pub struct MasterTicker {
    me: ReplicaId,
    options: MasterOptions,
    last_ms: Option<u64>,
    adopted: bool,
    proposed: Option<Proposed>,
}

impl MasterTicker {
    /// The ticker of master replica `me`.
    pub fn new(me: ReplicaId, options: MasterOptions) -> MasterTicker {
        MasterTicker {
            me,
            adopted: !options.manage_master_shard,
            options,
            last_ms: None,
            proposed: None,
        }
    }

    /// At time `now_ms` of the caller's monotonic clock: proposes what is
    /// due on the master shard through `nh` when the local replica leads,
    /// and returns the proposal's handle (pass its outcome to
    /// [`completed`](Self::completed) before the next call). `Ok(None)`:
    /// nothing to do (not the leader, or the proposal was refused at once).
    pub fn next(
        &mut self,
        nh: &NodeHost,
        now_ms: u64,
    ) -> Result<Option<longship::RequestHandle<longship::SmResult>>, TickerStopped> {
        match nh.get_leader(MASTER_SHARD_ID) {
            Ok(Some(l)) if l.replica_id == self.me => {}
            Ok(_) => {
                self.last_ms = None;
                return Ok(None);
            }
            Err(longship::Error::Stopped | longship::Error::ShardNotFound(_)) => {
                return Err(TickerStopped);
            }
            Err(_) => {
                self.last_ms = None;
                return Ok(None);
            }
        }
        if !self.adopted {
            match adopt_command(nh) {
                Some(None) => self.adopted = true,
                Some(Some(cmd)) => {
                    return Ok(self.propose(nh, &cmd, Proposed::Adopt));
                }
                // Not known yet: tick meanwhile, adopt at a later call.
                None => {}
            }
        }
        let first = self.last_ms.is_none();
        let elapsed_ms = self.last_ms.map_or(0, |l| now_ms.saturating_sub(l));
        // Set before proposing: a tick whose outcome is unknown loses its
        // time rather than counting it twice.
        self.last_ms = Some(now_ms);
        Ok(self.propose(nh, &Command::Tick { elapsed_ms, first }, Proposed::Tick))
    }

    fn propose(
        &mut self,
        nh: &NodeHost,
        cmd: &Command,
        what: Proposed,
    ) -> Option<longship::RequestHandle<longship::SmResult>> {
        let bytes = serde_json::to_vec(cmd).expect("commands serialise");
        let session = nh.get_noop_session(MASTER_SHARD_ID);
        match nh.propose(&session, bytes, self.options.propose_timeout) {
            Ok(h) => {
                self.proposed = Some(what);
                Some(h)
            }
            Err(e) => {
                tracing::debug!(error = %e, "master tick not proposed");
                None
            }
        }
    }

    /// The outcome of the proposal [`next`](Self::next) returned last.
    pub fn completed(&mut self, outcome: &longship::Result<longship::SmResult>) {
        match (self.proposed.take(), outcome) {
            (Some(Proposed::Adopt), Ok(r)) if r.value == RESULT_OK => self.adopted = true,
            (_, Err(e)) => tracing::debug!(error = %e, "master tick not applied"),
            _ => {}
        }
    }
}

/// On the master leader: `Some(None)` when the state (as the local replica
/// applied it) manages the master shard already, `Some(Some(cmd))` with the
/// command that adopts it, `None` when the local replica cannot tell now.
fn adopt_command(nh: &NodeHost) -> Option<Option<Command>> {
    let bytes = nh.stale_read(MASTER_SHARD_ID, b"state").ok()?;
    let state = serde_json::from_slice::<MasterState>(&bytes).ok()?;
    if state.shards.contains_key(&MASTER_SHARD_ID.0) {
        return Some(None);
    }
    let st = nh.raft_status(MASTER_SHARD_ID).ok()?;
    Some(Some(Command::AdoptShard {
        shard: MASTER_SHARD_ID.0,
        desired: 3,
        voters: st
            .membership
            .voters
            .iter()
            .map(|(r, a)| (r.0, a.clone()))
            .collect(),
        removed: st.membership.removed.iter().map(|r| r.0).collect(),
    }))
}

/// Starts the application's replicas with `inner`, and replicas of the
/// master shard (with their ticker) itself: the factory of every host when
/// [`MasterOptions::manage_master_shard`] is set, so that the master can
/// place its own replicas on any host.
pub struct MasterAwareFactory {
    nh: Weak<NodeHost>,
    inner: Arc<dyn longship::ReplicaFactory>,
    options: MasterOptions,
    /// The tickers of master replicas started here (each ends when its
    /// replica is stopped).
    nodes: Mutex<Vec<MasterNode>>,
}

impl MasterAwareFactory {
    /// A factory for `nh` that starts master replicas with `options` and
    /// every other replica with `inner`.
    pub fn new(
        nh: &Arc<NodeHost>,
        inner: Arc<dyn longship::ReplicaFactory>,
        options: MasterOptions,
    ) -> MasterAwareFactory {
        MasterAwareFactory {
            nh: Arc::downgrade(nh),
            inner,
            options,
            nodes: Mutex::new(Vec::new()),
        }
    }
}

impl longship::ReplicaFactory for MasterAwareFactory {
    fn start_replica(
        &self,
        nh: &NodeHost,
        shard_id: ShardId,
        replica_id: ReplicaId,
        start: Start,
        non_voting: bool,
    ) -> longship::Result<()> {
        if shard_id != MASTER_SHARD_ID {
            return self
                .inner
                .start_replica(nh, shard_id, replica_id, start, non_voting);
        }
        let arc = self.nh.upgrade().ok_or(longship::Error::Stopped)?;
        assert!(
            std::ptr::eq(Arc::as_ptr(&arc), nh),
            "a MasterAwareFactory serves the NodeHost it was made for"
        );
        let node =
            MasterNode::start_with(&arc, replica_id, start, non_voting, self.options.clone())
                .map_err(|e| match e {
                    MasterError::Longship(e) => e,
                    other => longship::Error::Rejected(other.to_string()),
                })?;
        self.nodes.lock().push(node);
        Ok(())
    }
}

/// Proposes `cmd` to the master shard through `nh` (which must run a
/// master replica); returns the result's value and data.
pub(crate) fn propose(
    nh: &NodeHost,
    cmd: &Command,
    timeout: Duration,
) -> Result<(u64, Vec<u8>), MasterError> {
    let bytes = serde_json::to_vec(cmd).expect("commands serialise");
    let mut session = nh.get_noop_session(MASTER_SHARD_ID);
    let r = nh.sync_propose(&mut session, bytes, timeout)?;
    Ok((r.value, r.data))
}

/// Asks the master (through `nh`, which runs a master replica) to create
/// `shard` with `replicas` replicas on as many live hosts; the hosts
/// start them at their next report.
pub fn create_shard(
    nh: &NodeHost,
    shard: ShardId,
    replicas: u32,
    timeout: Duration,
) -> Result<(), MasterError> {
    let (value, data) = propose(
        nh,
        &Command::CreateShard {
            shard: shard.0,
            replicas,
        },
        timeout,
    )?;
    if value != RESULT_OK {
        return Err(MasterError::Refused(String::from_utf8_lossy(&data).into()));
    }
    Ok(())
}

/// Asks the master (through `nh`, which runs a master replica) to start
/// (`drain`) or end draining `host` (a raft address that reported):
/// while draining, the host receives no new replica and its replicas are
/// moved to other hosts, one move per shard at a time.
pub fn drain_host(
    nh: &NodeHost,
    host: &str,
    drain: bool,
    timeout: Duration,
) -> Result<(), MasterError> {
    let (value, data) = propose(
        nh,
        &Command::Drain {
            host: host.to_string(),
            drain,
        },
        timeout,
    )?;
    if value != RESULT_OK {
        return Err(MasterError::Refused(String::from_utf8_lossy(&data).into()));
    }
    Ok(())
}

/// The master's state, read linearizably through `nh` (which runs a
/// master replica).
pub fn read_state(nh: &NodeHost, timeout: Duration) -> Result<MasterState, MasterError> {
    let bytes = nh.sync_read(MASTER_SHARD_ID, b"state", timeout)?;
    serde_json::from_slice(&bytes).map_err(|e| MasterError::Decode(e.to_string()))
}

/// The report as the master stores it.
pub fn report_from(r: &HostReport) -> Report {
    Report {
        host: r.raft_address.clone(),
        deployment_id: r.deployment_id,
        capacity: r.capacity,
        replicas: r
            .replicas
            .iter()
            .map(|x| ReplicaState {
                shard: x.shard_id.0,
                replica: x.replica_id.0,
                leader: x.role == Role::Leader,
                term: x.term.0,
                leader_id: x.leader_id.0,
                applied: x.applied.0,
                log_entries: (x.last_index.0 + 1).saturating_sub(x.first_index.0),
                membership: x.membership.as_ref().map(|m| Membership {
                    config_change_id: m.config_change_id.0,
                    voters: m.voters.iter().map(|(k, v)| (k.0, v.clone())).collect(),
                    non_votings: m
                        .non_votings
                        .iter()
                        .map(|(k, v)| (k.0, v.clone()))
                        .collect(),
                }),
                failed: x.failed,
                pending_change: x.pending_config_change,
            })
            .collect(),
        stored: r.stored.iter().map(|(s, r)| (s.0, r.0)).collect(),
        metadata: r.metadata.clone(),
    }
}

/// A master request as a NodeHost carries it out.
pub fn to_master_request(r: &Request) -> MasterRequest {
    match r {
        Request::StartReplica {
            shard,
            replica,
            start,
            non_voting,
        } => MasterRequest::StartReplica {
            shard_id: ShardId(*shard),
            replica_id: ReplicaId(*replica),
            start: match start {
                StartKind::New(m) => Start::New(
                    m.iter()
                        .map(|(k, v)| (ReplicaId(*k), v.clone()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                StartKind::Join => Start::Join,
            },
            non_voting: *non_voting,
        },
        Request::AddNonVoting {
            shard,
            replica,
            host,
            based_on,
        } => MasterRequest::AddNonVoting {
            shard_id: ShardId(*shard),
            replica_id: ReplicaId(*replica),
            address: host.clone(),
            config_change_id: longship::Index(*based_on),
        },
        Request::Promote {
            shard,
            replica,
            based_on,
        } => MasterRequest::PromoteNonVoting {
            shard_id: ShardId(*shard),
            replica_id: ReplicaId(*replica),
            config_change_id: longship::Index(*based_on),
        },
        Request::Delete {
            shard,
            replica,
            based_on,
        } => MasterRequest::DeleteReplica {
            shard_id: ShardId(*shard),
            replica_id: ReplicaId(*replica),
            config_change_id: longship::Index(*based_on),
        },
        Request::TransferLeader { shard, target } => MasterRequest::TransferLeader {
            shard_id: ShardId(*shard),
            target: ReplicaId(*target),
        },
        Request::RemoveReplica { shard, replica } => MasterRequest::RemoveReplica {
            shard_id: ShardId(*shard),
            replica_id: ReplicaId(*replica),
        },
    }
}

/// A [`MasterClient`] for NodeHosts in the same process as master
/// replicas: a report is proposed to the master shard through the first
/// NodeHost that takes it, the one whose master replica leads first (the
/// master's log holds every report, so the answer is computed by the
/// replicated state machine). A NodeHost without a master replica refuses
/// at once, so `members` may list every host (as a self-managed master,
/// which places its replicas itself, needs).
pub struct InProcessMasterClient {
    members: Mutex<Vec<Weak<NodeHost>>>,
    deployment_id: u64,
    timeout: Duration,
}

impl InProcessMasterClient {
    /// A client of the master of `deployment_id` whose replicas run on
    /// `members`; each report waits at most `timeout` per member tried.
    pub fn new(members: &[Arc<NodeHost>], deployment_id: u64, timeout: Duration) -> Self {
        InProcessMasterClient {
            members: Mutex::new(members.iter().map(Arc::downgrade).collect()),
            deployment_id,
            timeout,
        }
    }
}

impl MasterClient for InProcessMasterClient {
    fn deployment_id(&self) -> Result<u64, MasterClientError> {
        Ok(self.deployment_id)
    }

    fn report(&self, report: &HostReport) -> Result<Vec<MasterRequest>, MasterClientError> {
        let cmd = Command::Report(report_from(report));
        let members: Vec<Weak<NodeHost>> = self.members.lock().clone();
        let mut live: Vec<Arc<NodeHost>> = members.iter().filter_map(Weak::upgrade).collect();
        // The member whose replica leads first: its proposals need no
        // forwarding (a forwarded proposal lost in a leader change waits
        // for its whole timeout).
        live.sort_by_key(|nh| {
            !nh.raft_status(MASTER_SHARD_ID)
                .is_ok_and(|s| s.role == Role::Leader)
        });
        let mut last = String::from("no master replica is reachable");
        for nh in live {
            match propose(&nh, &cmd, self.timeout) {
                Ok((RESULT_OK, data)) => {
                    let reqs: Vec<Request> = serde_json::from_slice(&data)
                        .map_err(|e| MasterClientError(e.to_string()))?;
                    return Ok(reqs.iter().map(to_master_request).collect());
                }
                Ok((_, data)) => {
                    return Err(MasterClientError(String::from_utf8_lossy(&data).into()));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(MasterClientError(last))
    }
}
