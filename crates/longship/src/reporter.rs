//! Reporting to a master (dragonboat's `IMasterClient`, done for real).
//!
//! A NodeHost that is managed by a master (the `longship-master` crate, or
//! any service implementing [`MasterClient`]) runs a [`MasterReporter`]: a
//! thread of its own that, every [`ReportingOptions::interval`], builds a
//! bounded [`HostReport`] of what the host runs (shards, replica ids, roles,
//! terms, applied indexes, log sizes, the membership its leaders see),
//! sends it with [`MasterClient::report`] and carries out the
//! [`MasterRequest`]s the master answers with, through the ordinary
//! NodeHost API (start a replica with [`Start::Join`] or [`Start::New`],
//! add a non-voting replica, promote it, delete a replica, transfer
//! leadership, stop a removed replica and delete its data).
//!
//! Requests are idempotent: the master repeats a request in every answer
//! until the reports show it done, so a lost answer or a failed request
//! costs one interval, never a wrong decision. Errors of single requests
//! are logged and otherwise ignored for that reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use longship_raft::{ConfigChangeType, Index, ReplicaId, Role, ShardId, Term};
use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::info::MembershipInfo;
use crate::nodehost::NodeHost;
use crate::request::RequestHandle;
use crate::types::Start;

/// Most replicas one [`HostReport`] lists; a host with more reports the
/// first ones by shard id and sets [`HostReport::truncated`]. The bound keeps
/// a report (and the master's log entry holding it) small.
pub const MAX_REPORTED_REPLICAS: usize = 4096;

/// Most members of one membership list in a report (a shard with more is
/// reported without its membership; masters manage small shards).
pub const MAX_REPORTED_MEMBERS: usize = 16;

/// Most bytes of [`ReportingOptions::metadata`].
pub const MAX_REPORT_METADATA_BYTES: usize = 1024;

/// Most requests a reporter carries out per round (the rest wait for the
/// next round; the master repeats them).
pub const MAX_REQUESTS_PER_ROUND: usize = 64;

/// An error from a [`MasterClient`]: the master could not be reached or
/// refused the report. The reporter logs it and tries again next round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("master client: {0}")]
pub struct MasterClientError(pub String);

/// How a NodeHost talks to its master.
///
/// Implementations carry a report to the master and its answer back (an
/// in-process call, an RPC). They are called from the reporter's own
/// thread, one call at a time, and may block for up to about one reporting
/// interval.
pub trait MasterClient: Send + Sync {
    /// The deployment id the master manages; a NodeHost of another
    /// deployment refuses to report ([`MasterReporter::start`]).
    fn deployment_id(&self) -> std::result::Result<u64, MasterClientError>;

    /// Sends one report; returns what the master asks this host to do.
    fn report(
        &self,
        report: &HostReport,
    ) -> std::result::Result<Vec<MasterRequest>, MasterClientError>;
}

/// Starts replicas the master asks for: the application decides the state
/// machine kind and the replica [`Config`](crate::Config) of each shard.
pub trait ReplicaFactory: Send + Sync {
    /// Starts replica `replica_id` of `shard_id` on `nh` as `start` says
    /// (`Start::Restart` when the host already holds data of it), as a
    /// non-voting replica when `non_voting` is set.
    fn start_replica(
        &self,
        nh: &NodeHost,
        shard_id: ShardId,
        replica_id: ReplicaId,
        start: Start,
        non_voting: bool,
    ) -> Result<()>;
}

/// One replica in a [`HostReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaReport {
    /// The shard.
    pub shard_id: ShardId,
    /// The local replica.
    pub replica_id: ReplicaId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: Term,
    /// The leader it knows ([`ReplicaId::NONE`] when none).
    pub leader_id: ReplicaId,
    /// Its applied index.
    pub applied: Index,
    /// First index its log holds.
    pub first_index: Index,
    /// Last index its log holds.
    pub last_index: Index,
    /// The membership it applied (its `removed` set left empty to keep
    /// the report bounded); `None` on a replica that does not lead or a
    /// shard with more than [`MAX_REPORTED_MEMBERS`] members.
    pub membership: Option<MembershipInfo>,
    /// Whether the replica stopped after a failure.
    pub failed: bool,
    /// A membership change is proposed and not applied yet, as this
    /// replica knows it (in its log, or requested through it): a master
    /// starts no other change of the shard meanwhile.
    pub pending_config_change: bool,
}

/// What a NodeHost tells its master each round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostReport {
    /// The host's raft address: its identity in the deployment.
    pub raft_address: String,
    /// The host's deployment id.
    pub deployment_id: u64,
    /// How many replicas the host is willing to hold
    /// ([`ReportingOptions::capacity`]).
    pub capacity: u32,
    /// Running replicas, by shard id; at most [`MAX_REPORTED_REPLICAS`].
    pub replicas: Vec<ReplicaReport>,
    /// Replicas whose data the host's log storage holds but that do not
    /// run (stopped, or left by a crash), by shard id; at most
    /// [`MAX_REPORTED_REPLICAS`].
    pub stored: Vec<(ShardId, ReplicaId)>,
    /// Whether a list was cut at [`MAX_REPORTED_REPLICAS`].
    pub truncated: bool,
    /// What the application tells the master about the host
    /// ([`ReportingOptions::metadata`]: the address clients reach it at,
    /// say).
    pub metadata: String,
}

/// What a master asks a NodeHost to do. Each is idempotent: a request
/// already done (the replica runs, the member was added) succeeds or fails
/// harmlessly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MasterRequest {
    /// Start a replica: `Start::New(members)` for a new shard,
    /// `Start::Join` for a replica added to a running shard (the host
    /// starts it with `Start::Restart` when it already holds its data).
    StartReplica {
        /// The shard.
        shard_id: ShardId,
        /// The replica to start on this host.
        replica_id: ReplicaId,
        /// How.
        start: Start,
        /// Start it as a non-voting replica.
        non_voting: bool,
    },
    /// Propose the addition of a non-voting replica at `address` (sent to
    /// the host that leads the shard).
    AddNonVoting {
        /// The shard.
        shard_id: ShardId,
        /// The new replica.
        replica_id: ReplicaId,
        /// Its host's raft address.
        address: String,
        /// Ordered change: the `config_change_id` of the membership the
        /// master based it on; the change is rejected when applied to any
        /// other membership, so a delayed or repeated request can never
        /// take effect after another change. `Index(0)`: unordered.
        config_change_id: Index,
    },
    /// Propose the promotion of a non-voting replica to voter.
    PromoteNonVoting {
        /// The shard.
        shard_id: ShardId,
        /// The replica to promote.
        replica_id: ReplicaId,
        /// As for `AddNonVoting`.
        config_change_id: Index,
    },
    /// Propose the removal of a replica, for good.
    DeleteReplica {
        /// The shard.
        shard_id: ShardId,
        /// The replica to remove.
        replica_id: ReplicaId,
        /// As for `AddNonVoting`.
        config_change_id: Index,
    },
    /// Ask the shard to move leadership to `target`.
    TransferLeader {
        /// The shard.
        shard_id: ShardId,
        /// The replica that should lead.
        target: ReplicaId,
    },
    /// Stop the local replica (if it runs) and delete its data: it was
    /// removed from its shard (its host was declared dead, say).
    RemoveReplica {
        /// The shard.
        shard_id: ShardId,
        /// The removed replica.
        replica_id: ReplicaId,
    },
}

impl MasterRequest {
    /// The shard the request is about.
    pub fn shard_id(&self) -> ShardId {
        match self {
            MasterRequest::StartReplica { shard_id, .. }
            | MasterRequest::AddNonVoting { shard_id, .. }
            | MasterRequest::PromoteNonVoting { shard_id, .. }
            | MasterRequest::DeleteReplica { shard_id, .. }
            | MasterRequest::TransferLeader { shard_id, .. }
            | MasterRequest::RemoveReplica { shard_id, .. } => *shard_id,
        }
    }
}

/// Settings of a [`MasterReporter`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportingOptions {
    /// Time between two reports (at least 10 ms, at most 60 s). The master's
    /// `dead_after` should be several intervals.
    pub interval: Duration,
    /// How many replicas this host is willing to hold (reported as is).
    pub capacity: u32,
    /// Timeout of each membership request the host proposes.
    pub request_timeout: Duration,
    /// Sent as is in every report ([`HostReport::metadata`]); at most
    /// [`MAX_REPORT_METADATA_BYTES`].
    pub metadata: String,
}

impl Default for ReportingOptions {
    fn default() -> Self {
        ReportingOptions {
            interval: Duration::from_millis(500),
            capacity: 1024,
            request_timeout: Duration::from_secs(5),
            metadata: String::new(),
        }
    }
}

impl ReportingOptions {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if self.interval < Duration::from_millis(10) || self.interval > Duration::from_secs(60) {
            return Err(Error::invalid_config(
                "interval",
                "must be between 10 ms and 60 s",
            ));
        }
        if self.metadata.len() > MAX_REPORT_METADATA_BYTES {
            return Err(Error::invalid_config(
                "metadata",
                format!("must be at most {MAX_REPORT_METADATA_BYTES} bytes"),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::invalid_config("request_timeout", "must be non-zero"));
        }
        Ok(())
    }
}

impl NodeHost {
    /// The report this host sends its master (see [`HostReport`]), with
    /// `capacity` as the number of replicas it is willing to hold.
    pub fn host_report(&self, capacity: u32) -> HostReport {
        let info = self.get_node_host_info();
        let mut truncated = false;
        let mut replicas = Vec::new();
        for s in &info.shards {
            if replicas.len() == MAX_REPORTED_REPLICAS {
                truncated = true;
                break;
            }
            // The replica may stop between the listing and this call.
            let Ok(st) = self.raft_status(s.shard_id) else {
                continue;
            };
            let m = &st.membership;
            let members = m.voters.len() + m.non_votings.len() + m.witnesses.len();
            let membership =
                (st.role == Role::Leader && members <= MAX_REPORTED_MEMBERS).then(|| {
                    MembershipInfo {
                        config_change_id: m.config_change_id,
                        voters: m.voters.clone(),
                        non_votings: m.non_votings.clone(),
                        witnesses: m.witnesses.clone(),
                        removed: Default::default(),
                    }
                });
            replicas.push(ReplicaReport {
                shard_id: s.shard_id,
                replica_id: s.replica_id,
                role: st.role,
                term: st.hard_state.term,
                leader_id: st.leader_id,
                applied: s.applied,
                first_index: st.first_index,
                last_index: st.last_index,
                membership,
                failed: s.failed,
                pending_config_change: s.pending_config_change,
            });
        }
        let running: std::collections::BTreeSet<ShardId> =
            info.shards.iter().map(|s| s.shard_id).collect();
        let mut stored: Vec<(ShardId, ReplicaId)> = info
            .log_info
            .iter()
            .filter(|l| !running.contains(&l.shard_id))
            .map(|l| (l.shard_id, l.replica_id))
            .collect();
        stored.sort();
        if stored.len() > MAX_REPORTED_REPLICAS {
            stored.truncate(MAX_REPORTED_REPLICAS);
            truncated = true;
        }
        assert!(replicas.len() <= MAX_REPORTED_REPLICAS && stored.len() <= MAX_REPORTED_REPLICAS);
        HostReport {
            raft_address: self.raft_address().to_string(),
            deployment_id: self.config().deployment_id,
            capacity,
            replicas,
            stored,
            truncated,
            metadata: String::new(),
        }
    }

    /// Carries out one master request (see [`MasterRequest`]) and waits
    /// for it: `factory` starts replicas, `timeout` bounds membership
    /// requests. Starting a replica that already runs succeeds (the
    /// request is repeated until the master sees it done).
    pub fn execute_master_request(
        &self,
        req: &MasterRequest,
        factory: &dyn ReplicaFactory,
        timeout: Duration,
    ) -> Result<()> {
        match self.submit_master_request(req, factory, timeout)? {
            Some(handle) => handle.wait(),
            None => Ok(()),
        }
    }

    /// Like [`execute_master_request`](Self::execute_master_request)
    /// without waiting for membership changes and leadership transfers:
    /// those return the handle of the proposed change (`None` for requests
    /// already done when this returns). The reporter uses it so that a
    /// change that cannot commit does not hold up its reports.
    pub fn submit_master_request(
        &self,
        req: &MasterRequest,
        factory: &dyn ReplicaFactory,
        timeout: Duration,
    ) -> Result<Option<RequestHandle<()>>> {
        match req {
            MasterRequest::StartReplica {
                shard_id,
                replica_id,
                start,
                non_voting,
            } => {
                if let Ok(st) = self.raft_status(*shard_id) {
                    if st.replica_id == *replica_id {
                        return Ok(None);
                    }
                    return Err(Error::ShardAlreadyExists(*shard_id));
                }
                let start = if self.has_node_info(*shard_id, *replica_id) {
                    Start::Restart
                } else {
                    start.clone()
                };
                factory.start_replica(self, *shard_id, *replica_id, start, *non_voting)?;
                Ok(None)
            }
            MasterRequest::AddNonVoting {
                shard_id,
                replica_id,
                address,
                config_change_id,
            } => self
                .master_config_change(
                    *shard_id,
                    ConfigChangeType::AddNonVoting,
                    *replica_id,
                    Some(address.clone()),
                    *config_change_id,
                    timeout,
                )
                .map(Some),
            MasterRequest::PromoteNonVoting {
                shard_id,
                replica_id,
                config_change_id,
            } => self
                .master_config_change(
                    *shard_id,
                    ConfigChangeType::AddReplica,
                    *replica_id,
                    None,
                    *config_change_id,
                    timeout,
                )
                .map(Some),
            MasterRequest::DeleteReplica {
                shard_id,
                replica_id,
                config_change_id,
            } => self
                .master_config_change(
                    *shard_id,
                    ConfigChangeType::RemoveReplica,
                    *replica_id,
                    None,
                    *config_change_id,
                    timeout,
                )
                .map(Some),
            MasterRequest::TransferLeader { shard_id, target } => {
                self.request_leader_transfer(*shard_id, *target)?;
                Ok(None)
            }
            MasterRequest::RemoveReplica {
                shard_id,
                replica_id,
            } => {
                match self.stop_replica(*shard_id, *replica_id) {
                    Ok(()) | Err(Error::ShardNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
                if self.has_node_info(*shard_id, *replica_id) {
                    // Durably, behind a tombstone: a removed id never
                    // serves again (the stop above may still be finishing).
                    self.sync_remove_data(
                        *shard_id,
                        *replica_id,
                        std::time::Duration::from_secs(5),
                    )?;
                }
                Ok(None)
            }
        }
    }
}

/// One NodeHost's reporting without a thread of its own: each
/// [`round`](Self::round) sends one report and carries out the master's
/// answer. [`MasterReporter`] calls it every [`ReportingOptions::interval`]
/// on its thread; a caller that drives time itself (the simulator, whose
/// NodeHosts run in manual mode on one thread) calls it when its own clock
/// says a round is due.
pub struct ReportRounds {
    client: Arc<dyn MasterClient>,
    factory: Arc<dyn ReplicaFactory>,
    options: ReportingOptions,
    /// Membership changes proposed and not completed yet: an identical
    /// request is not proposed again meanwhile. At most
    /// [`MAX_REQUESTS_PER_ROUND`] (each ends by its timeout at the latest).
    in_flight: Vec<(MasterRequest, RequestHandle<()>)>,
}

impl ReportRounds {
    /// Checks `options`, asks `client` for the deployment id and refuses a
    /// master of another deployment than `nh`'s ([`Error::InvalidConfig`]).
    pub fn new(
        nh: &NodeHost,
        client: Arc<dyn MasterClient>,
        factory: Arc<dyn ReplicaFactory>,
        options: ReportingOptions,
    ) -> Result<ReportRounds> {
        options.validate()?;
        let ours = nh.config().deployment_id;
        let theirs = client
            .deployment_id()
            .map_err(|e| Error::invalid_config("master_client", e.to_string()))?;
        if theirs != ours {
            return Err(Error::invalid_config(
                "deployment_id",
                format!("the master manages deployment {theirs}, this host is in {ours}"),
            ));
        }
        Ok(ReportRounds {
            client,
            factory,
            options,
            in_flight: Vec::new(),
        })
    }

    /// The settings.
    pub fn options(&self) -> &ReportingOptions {
        &self.options
    }

    /// The membership changes and transfers this host proposed that have
    /// not completed yet.
    pub fn in_flight(&self) -> impl Iterator<Item = &MasterRequest> {
        self.in_flight.iter().map(|(r, _)| r)
    }

    /// One round on `nh`: [`prepare`](Self::prepare) the report, send it
    /// with the client, and [`carry_out`](Self::carry_out) the answer. A
    /// client error is logged and the round ends. `stop` is asked between
    /// requests; [`Error::Stopped`] means the NodeHost is closed (or `stop`
    /// said so) and no more rounds should run.
    pub fn round(&mut self, nh: &NodeHost, stop: &dyn Fn() -> bool) -> Result<()> {
        let report = self.prepare(nh)?;
        match self.client.report(&report) {
            Ok(requests) => self.carry_out(nh, &requests, stop)?,
            Err(e) => tracing::debug!(error = %e, "report not delivered"),
        }
        Ok(())
    }

    /// The first half of a round: forgets completed requests and builds
    /// the report to send. For a caller that carries reports itself (the
    /// simulator plays the RPC); [`round`](Self::round) does both halves.
    pub fn prepare(&mut self, nh: &NodeHost) -> Result<HostReport> {
        if nh.host.is_stopped() {
            return Err(Error::Stopped);
        }
        self.in_flight.retain(|(req, h)| match h.try_result() {
            None => true,
            Some(outcome) => {
                tracing::debug!(?req, ?outcome, "master request completed");
                false
            }
        });
        let mut report = nh.host_report(self.options.capacity);
        report.metadata.clone_from(&self.options.metadata);
        Ok(report)
    }

    /// The second half of a round: carries out at most
    /// [`MAX_REQUESTS_PER_ROUND`] of the master's answer (membership
    /// changes without waiting for them; one identical to a change still
    /// in flight is not proposed again).
    pub fn carry_out(
        &mut self,
        nh: &NodeHost,
        requests: &[MasterRequest],
        stop: &dyn Fn() -> bool,
    ) -> Result<()> {
        for req in requests.iter().take(MAX_REQUESTS_PER_ROUND) {
            if stop() {
                return Err(Error::Stopped);
            }
            if self.in_flight.len() >= MAX_REQUESTS_PER_ROUND
                || self.in_flight.iter().any(|(r, _)| r == req)
            {
                continue;
            }
            match nh.submit_master_request(req, &*self.factory, self.options.request_timeout) {
                Ok(Some(h)) => self.in_flight.push((req.clone(), h)),
                Ok(None) => tracing::debug!(?req, "master request done"),
                Err(Error::Stopped) => return Err(Error::Stopped),
                Err(e) => tracing::debug!(?req, error = %e, "master request failed"),
            }
        }
        assert!(self.in_flight.len() <= MAX_REQUESTS_PER_ROUND);
        Ok(())
    }
}

/// The reporting loop of one NodeHost ([`MasterReporter::start`]); stops
/// when dropped, when [`stop`](Self::stop) is called, or when the NodeHost
/// is dropped or closed.
pub struct MasterReporter {
    shared: Arc<ReporterShared>,
    thread: Option<JoinHandle<()>>,
}

struct ReporterShared {
    stop: AtomicBool,
    wake: Condvar,
    lock: Mutex<()>,
    rounds: std::sync::atomic::AtomicU64,
}

impl MasterReporter {
    /// Asks `client` for the deployment id (refusing a master of another
    /// deployment with [`Error::InvalidConfig`]), then reports `nh` every
    /// `options.interval` on a thread of its own and carries out the
    /// answers, starting replicas with `factory` ([`ReportRounds`]).
    ///
    /// The thread holds only a weak reference: it ends when the NodeHost
    /// is dropped or closed.
    pub fn start(
        nh: &Arc<NodeHost>,
        client: Arc<dyn MasterClient>,
        factory: Arc<dyn ReplicaFactory>,
        options: ReportingOptions,
    ) -> Result<MasterReporter> {
        let rounds = ReportRounds::new(nh, client, factory, options)?;
        let shared = Arc::new(ReporterShared {
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            lock: Mutex::new(()),
            rounds: Default::default(),
        });
        let weak = Arc::downgrade(nh);
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("longship-report-{}", nh.raft_address()))
            .spawn(move || report_loop(weak, rounds, s))
            .map_err(Error::Io)?;
        Ok(MasterReporter {
            shared,
            thread: Some(thread),
        })
    }

    /// Rounds completed so far (reports sent, answered or not).
    pub fn rounds(&self) -> u64 {
        self.shared.rounds.load(Ordering::Acquire)
    }

    /// Whether the loop still runs (it ends by itself once its NodeHost is
    /// closed or dropped).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the loop and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _g = self.shared.lock.lock();
            self.shared.wake.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MasterReporter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn report_loop(nh: Weak<NodeHost>, mut rounds: ReportRounds, shared: Arc<ReporterShared>) {
    let interval = rounds.options().interval;
    while !shared.stop.load(Ordering::Acquire) {
        {
            let Some(nh) = nh.upgrade() else { return };
            let stop = || shared.stop.load(Ordering::Acquire);
            if rounds.round(&nh, &stop).is_err() {
                return;
            }
            shared.rounds.fetch_add(1, Ordering::AcqRel);
        }
        let mut g = shared.lock.lock();
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        shared.wake.wait_for(&mut g, interval);
    }
}
