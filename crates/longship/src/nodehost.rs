//! [`NodeHost`]: the API. One per server; hosts replicas of many shards
//! that share one log storage, one transport and the worker pools.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use longship_raft::codec::encode_config_change;
use longship_raft::{
    ConfigChange, ConfigChangeType, Entry, EntryType, HardState, Index, Membership, Raft,
    ReplicaId, ShardId, bootstrap_entries,
};
use longship_storage::logdb::{LogUpdate, ReplicaLog};
use longship_storage::snapshot::SnapshotStore;
use parking_lot::Mutex;

use crate::builder::{DirLock, NodeHostBuilder};
use crate::config::{Config, NodeHostConfig};
use crate::engine::{ApplyWorker, LogWriter, SnapshotWorker, StepWorker, recover_verified};
use crate::error::{Error, Result};
use crate::host::{HostState, SnapshotJob};
use crate::info::{MembershipInfo, NodeHostInfo};
use crate::metrics::{Gauges, Metrics};
use crate::replica::{
    ApplyTask, Command, CoreState, Inbox, Pending, PendingConfigChange, PendingSnapshot, Replica,
    ReplicaRef,
};
use crate::request::{RequestHandle, request};
use crate::rsm::{Rsm, UserSm};
use crate::session::Session;
use crate::sm::{ConcurrentStateMachine, OnDiskStateMachine, SmResult, StateMachine, StopFlag};
use crate::submit::{
    NodeUser, deadline, holds_data, lookup_on, propose_on, propose_raw, read_index_on,
};
use crate::types::{Leader, SnapshotOption, SnapshotResult, Start};

/// Hosts replicas of many shards. See the crate documentation.
///
/// A one-replica shard on an in-memory network ([`NodeHost::new`] would use
/// TCP on `raft_address` instead), with nothing but `longship` and `std`:
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use longship::transport::MemNetwork;
/// use longship::{
///     Config, NodeHost, NodeHostConfig, ReplicaId, ShardId, SmEntry, SmError, Start,
///     StateMachine, StopFlag,
/// };
///
/// /// Counts the proposals it applied.
/// #[derive(Default)]
/// struct Counter(u64);
///
/// impl StateMachine for Counter {
///     fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
///         for e in entries {
///             self.0 += 1;
///             e.result.value = self.0;
///         }
///         Ok(())
///     }
///     fn lookup(&self, _query: &[u8]) -> Result<Vec<u8>, SmError> {
///         Ok(self.0.to_le_bytes().to_vec())
///     }
///     fn save_snapshot(&self, w: &mut dyn std::io::Write, _: &StopFlag) -> Result<(), SmError> {
///         Ok(w.write_all(&self.0.to_le_bytes())?)
///     }
///     fn recover_from_snapshot(&mut self, r: &mut dyn std::io::Read, _: &StopFlag) -> Result<(), SmError> {
///         let mut b = [0u8; 8];
///         r.read_exact(&mut b)?;
///         self.0 = u64::from_le_bytes(b);
///         Ok(())
///     }
/// }
///
/// let dir = std::env::temp_dir().join(format!("longship-doc-{}", std::process::id()));
/// let net = MemNetwork::new();
/// let cfg = NodeHostConfig {
///     node_host_dir: dir.clone(),
///     rtt_ms: 5,
///     raft_address: "host1:1".into(),
///     ..NodeHostConfig::default()
/// };
/// let nh = NodeHost::builder(cfg).transport(Arc::new(net.transport("host1:1"))).build().unwrap();
/// let shard = ShardId(100);
/// let members = [(ReplicaId(1), "host1:1".to_string())].into();
/// let cfg = Config::new(shard, ReplicaId(1));
/// nh.start_replica(Start::New(members), |_, _| Box::new(Counter::default()), cfg).unwrap();
/// let mut session = nh.get_noop_session(shard);
/// let timeout = Duration::from_secs(5);
/// let result = loop {
///     match nh.sync_propose(&mut session, b"hello".to_vec(), timeout) {
///         Ok(r) => break r,
///         Err(e) if e.is_temporary() => std::thread::sleep(Duration::from_millis(10)),
///         Err(e) => panic!("{e}"),
///     }
/// };
/// assert_eq!(result.value, 1);
/// let count = nh.sync_read(shard, b"", timeout).unwrap();
/// assert_eq!(count, 1u64.to_le_bytes());
/// nh.close();
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub struct NodeHost {
    pub(crate) host: Arc<HostState>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Held from `build` until `close`: no other NodeHost (or offline tool)
    /// uses the directory meanwhile.
    dir_lock: Mutex<Option<DirLock>>,
    /// The metrics endpoint, when `metrics_address` is set.
    metrics_server: Mutex<Option<crate::metrics_http::MetricsServer>>,
    closed: AtomicBool,
}

/// Which kind of state machine a replica runs.
enum SmFactory {
    Regular(Box<dyn StateMachine>),
    Concurrent(Box<dyn ConcurrentStateMachine>),
    OnDisk(Box<dyn OnDiskStateMachine>),
}

impl NodeHost {
    /// A NodeHost with the default parts: TCP transport on `raft_address`
    /// (with mutual TLS if configured), the write-ahead log in `wal_dir`,
    /// OS files, worker threads.
    pub fn new(cfg: NodeHostConfig) -> Result<NodeHost> {
        NodeHost::builder(cfg).build()
    }

    /// A builder for a NodeHost with `cfg`.
    pub fn builder(cfg: NodeHostConfig) -> NodeHostBuilder {
        NodeHostBuilder::new(cfg)
    }

    /// The raft address of this host.
    pub fn raft_address(&self) -> &str {
        &self.host.cfg.raft_address
    }

    /// The configuration.
    pub fn config(&self) -> &NodeHostConfig {
        &self.host.cfg
    }

    /// The counters of this host.
    pub fn metrics(&self) -> &Metrics {
        &self.host.metrics
    }

    /// Queue depths and replica states now (takes each replica's queue
    /// locks briefly; meant for a metrics scrape, not a hot loop).
    pub fn gauges(&self) -> Gauges {
        gauges_of(&self.host)
    }

    /// Counters, latency histograms and gauges in Prometheus text
    /// exposition format (what the `metrics_address` endpoint serves).
    pub fn prometheus_text(&self) -> String {
        prometheus_text_of(&self.host)
    }

    /// Where the metrics endpoint listens
    /// ([`NodeHostConfig::metrics_address`] with the port it got), if one
    /// was configured.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_server.lock().as_ref().map(|s| s.local_addr())
    }
}

/// What [`NodeHost::prometheus_text`] returns, from the shared state.
fn prometheus_text_of(host: &HostState) -> String {
    host.metrics.prometheus_text() + &gauges_of(host).prometheus_text()
}

/// What [`NodeHost::gauges`] returns, from the shared state.
fn gauges_of(host: &HostState) -> Gauges {
    {
        let mut g = Gauges {
            snapshot_jobs_queued: host.snapshot_jobs.lock().len() as u64,
            ..Gauges::default()
        };
        let replicas: Vec<ReplicaRef> = host.replicas.read().values().cloned().collect();
        for r in replicas {
            g.replicas += 1;
            g.replicas_quiesced += u64::from(r.quiesced.load(Ordering::Relaxed));
            g.replicas_failed += u64::from(r.failed.lock().is_some());
            {
                let inbox = r.inbox.lock();
                g.inbound_messages_queued += inbox.messages.len() as u64;
                g.proposals_queued += inbox.proposals.len() as u64;
                g.reads_pending += inbox.reads.len() as u64;
            }
            {
                let pending = r.pending.lock();
                g.proposals_pending += pending.proposals.len() as u64;
                g.reads_pending += pending
                    .reads
                    .values()
                    .map(|p| p.waiters.len() as u64)
                    .sum::<u64>();
            }
            g.apply_tasks_queued += r.apply_queue.lock().len() as u64;
        }
        g
    }
}

impl NodeHost {
    /// The NodeHost over a built host state, holding its directory; starts
    /// the worker threads unless `manual`, and the metrics endpoint if
    /// configured.
    pub(crate) fn assemble(host: Arc<HostState>, lock: DirLock, manual: bool) -> Result<NodeHost> {
        let nh = NodeHost {
            host,
            threads: Mutex::new(Vec::new()),
            dir_lock: Mutex::new(Some(lock)),
            metrics_server: Mutex::new(None),
            closed: AtomicBool::new(false),
        };
        if !manual {
            nh.spawn_threads();
        }
        if !nh.host.cfg.metrics_address.is_empty() {
            let host = nh.host.clone();
            let server = crate::metrics_http::MetricsServer::start(
                &nh.host.cfg.metrics_address,
                move || prometheus_text_of(&host),
            )?;
            *nh.metrics_server.lock() = Some(server);
        }
        Ok(nh)
    }

    fn spawn_threads(&self) {
        self.host.step_on_receive.store(true, Ordering::Release);
        let mut threads = self.threads.lock();
        let idle = Duration::from_millis(self.host.cfg.rtt_ms.max(1));
        for id in 0..self.host.cfg.step_workers {
            let w = StepWorker {
                host: self.host.clone(),
                id,
            };
            threads.push(spawn(format!("ls-step-{id}"), move || {
                while !w.host.is_stopped() {
                    if !crate::engine::supervised(&w.host, || w.run_once()) {
                        w.host.step_ready[id].wait(idle);
                    }
                }
            }));
        }
        if self.host.cfg.async_log_writes {
            let w = LogWriter {
                host: self.host.clone(),
            };
            threads.push(spawn("ls-write".into(), move || {
                while !w.host.is_stopped() {
                    if !crate::engine::supervised(&w.host, || w.run_once()) {
                        w.host.writes.wait(idle);
                    }
                }
            }));
        }
        for id in 0..self.host.cfg.apply_workers {
            let w = ApplyWorker {
                host: self.host.clone(),
                id,
            };
            threads.push(spawn(format!("ls-apply-{id}"), move || {
                while !w.host.is_stopped() {
                    if !crate::engine::supervised(&w.host, || w.run_once()) {
                        w.host.apply_ready[id].wait(idle);
                    }
                }
            }));
        }
        for id in 0..self.host.cfg.snapshot_workers {
            let w = SnapshotWorker {
                host: self.host.clone(),
            };
            threads.push(spawn(format!("ls-snap-{id}"), move || {
                while !w.host.is_stopped() {
                    if !crate::engine::supervised(&w.host, || w.run_once()) {
                        w.host.snapshot_ready.wait(idle);
                    }
                }
            }));
        }
        let host = self.host.clone();
        threads.push(spawn("ls-ticker".into(), move || {
            let rtt = Duration::from_millis(host.cfg.rtt_ms);
            let mut next = Instant::now() + rtt;
            while !host.is_stopped() {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(50)));
                    continue;
                }
                // Never two ticks closer than one RTT (no catching up in a
                // burst after a stall): request deadlines count ticks, and a
                // burst would time requests out before their timeout.
                next = now + rtt;
                host.tick();
            }
        }));
    }

    /// Manual mode: runs every worker once. Returns whether any did work.
    pub fn run_once(&self) -> bool {
        self.run_workers(true)
    }

    /// Manual mode: runs every worker once but the log writer of
    /// asynchronous log writes (`NodeHostConfig::async_log_writes`), whose
    /// queued writes stay in flight until a later [`run_once`](Self::run_once):
    /// the simulator's way of letting writes outlast a round (and a crash
    /// lose them). The same as `run_once` without asynchronous writes.
    pub fn run_once_deferring_writes(&self) -> bool {
        self.run_workers(false)
    }

    fn run_workers(&self, write: bool) -> bool {
        let mut any = false;
        for id in 0..self.host.step_ready.len() {
            any |= StepWorker {
                host: self.host.clone(),
                id,
            }
            .run_once();
        }
        if write && self.host.cfg.async_log_writes {
            any |= LogWriter {
                host: self.host.clone(),
            }
            .run_once();
        }
        for id in 0..self.host.apply_ready.len() {
            any |= ApplyWorker {
                host: self.host.clone(),
                id,
            }
            .run_once();
        }
        any |= SnapshotWorker {
            host: self.host.clone(),
        }
        .run_once();
        any
    }

    /// Manual mode: advances logical time by one RTT.
    pub fn tick(&self) {
        self.host.tick();
    }

    // ------------------------------------------------------------ lifecycle

    /// Starts replica `cfg.replica_id` of shard `cfg.shard_id` with an
    /// in-memory [`StateMachine`] made by `create`: a new shard, a restart,
    /// or a join, as [`Start`] says (and checks against the data this host
    /// holds of the replica). `create` runs only once every check passed.
    ///
    /// ```no_run
    /// # use longship::{Config, NodeHost, ReplicaId, ShardId, Start, StateMachine};
    /// # fn f(nh: &NodeHost, make: fn() -> Box<dyn StateMachine>) -> longship::Result<()> {
    /// let members = [(ReplicaId(1), "host1:63001".to_string()), (ReplicaId(2), "host2:63001".to_string())];
    /// nh.start_replica(Start::New(members.into()), |_, _| make(), Config::new(ShardId(128), ReplicaId(1)))?;
    /// # Ok(()) }
    /// ```
    pub fn start_replica<F>(&self, start: Start, create: F, cfg: Config) -> Result<()>
    where
        F: FnOnce(ShardId, ReplicaId) -> Box<dyn StateMachine>,
    {
        let (shard, replica) = (cfg.shard_id, cfg.replica_id);
        let sm = move || SmFactory::Regular(create(shard, replica));
        self.start(start, sm, cfg)
    }

    /// Starts a replica with a [`ConcurrentStateMachine`]; see
    /// [`start_replica`](Self::start_replica).
    pub fn start_concurrent_replica<F>(&self, start: Start, create: F, cfg: Config) -> Result<()>
    where
        F: FnOnce(ShardId, ReplicaId) -> Box<dyn ConcurrentStateMachine>,
    {
        let (shard, replica) = (cfg.shard_id, cfg.replica_id);
        let sm = move || SmFactory::Concurrent(create(shard, replica));
        self.start(start, sm, cfg)
    }

    /// Starts a replica with an [`OnDiskStateMachine`]; see
    /// [`start_replica`](Self::start_replica).
    pub fn start_on_disk_replica<F>(&self, start: Start, create: F, cfg: Config) -> Result<()>
    where
        F: FnOnce(ShardId, ReplicaId) -> Box<dyn OnDiskStateMachine>,
    {
        let (shard, replica) = (cfg.shard_id, cfg.replica_id);
        let sm = move || SmFactory::OnDisk(create(shard, replica));
        self.start(start, sm, cfg)
    }

    fn start(&self, start: Start, sm: impl FnOnce() -> SmFactory, cfg: Config) -> Result<()> {
        let host = &self.host;
        if host.is_stopped() {
            return Err(Error::Stopped);
        }
        cfg.validate()?;
        let (shard, me) = (cfg.shard_id, cfg.replica_id);
        let reserved = host
            .reserve_shard_for_start(shard)
            .ok_or(Error::ShardAlreadyExists(shard))?;
        crate::tombstone::check_not_removed(host, shard, me)?;
        let stored = host.logdb.read_state(shard, me).is_some();
        match (&start, stored) {
            (Start::Restart, true) => {}
            (Start::Join, false) => {
                // Recorded durably before it runs: a joining replica may be
                // promoted to voter (counted in the shard's quorum) before
                // any entry reaches it, and a host that restarts must know
                // to start it again, with `Restart` (master seed 11690: a
                // voter with nothing stored was forgotten by its host's
                // restart and its shard lost its quorum for ever).
                host.logdb.save_raft_state(&[LogUpdate {
                    shard_id: shard,
                    replica_id: me,
                    entries: Vec::new(),
                    hard_state: Some(HardState::default()),
                    snapshot: None,
                    clear_recovery: false,
                }])?;
            }
            (Start::New(_) | Start::Join, true) => {
                return Err(Error::ReplicaHasData {
                    shard_id: shard,
                    replica_id: me,
                });
            }
            (Start::Restart, false) => {
                return Err(Error::ReplicaHasNoData {
                    shard_id: shard,
                    replica_id: me,
                });
            }
            (Start::New(initial_members), false) => {
                if cfg.is_witness || cfg.is_non_voting {
                    return Err(Error::invalid_config(
                        "is_witness",
                        "witness and non-voting replicas are added to a running shard and started with Start::Join",
                    ));
                }
                if !initial_members.contains_key(&me) {
                    return Err(Error::invalid_config(
                        "Start::New",
                        format!("the initial members must include this replica ({me})"),
                    ));
                }
                if initial_members.contains_key(&ReplicaId::NONE) {
                    return Err(Error::invalid_config(
                        "Start::New",
                        "replica id 0 is reserved",
                    ));
                }
                for a in initial_members.values() {
                    if a.is_empty() || a.len() > 255 {
                        return Err(Error::invalid_config(
                            "Start::New",
                            "addresses must be 1..=255 bytes",
                        ));
                    }
                }
                let membership = Membership::with_voters(
                    initial_members.iter().map(|(id, a)| (id.0, a.clone())),
                );
                let (entries, hard_state) = bootstrap_entries(&membership);
                host.logdb.save_raft_state(&[LogUpdate {
                    shard_id: shard,
                    replica_id: me,
                    entries,
                    hard_state: Some(hard_state),
                    snapshot: None,
                    clear_recovery: false,
                }])?;
            }
        }
        let state = host.logdb.read_state(shard, me).unwrap_or_default();
        let snapshots = SnapshotStore::open(host.fs.clone(), &host.snapshot_root, shard, me)?;
        let stop = StopFlag::new();
        // The factory runs only once every argument was checked.
        let user_sm = match sm() {
            SmFactory::Regular(sm) => UserSm::Regular(parking_lot::RwLock::new(sm)),
            SmFactory::Concurrent(sm) => UserSm::Concurrent(sm),
            SmFactory::OnDisk(sm) => UserSm::OnDisk(sm),
        };
        let on_disk_index = match &user_sm {
            UserSm::OnDisk(sm) => Some(sm.open(&stop).map_err(|e| Error::StateMachine(e.0))?),
            _ => None,
        };
        let rsm = Rsm::new(user_sm, cfg.max_sessions, cfg.is_witness)
            .with_snapshot_compression(cfg.snapshot_compression);
        let raft_cfg = longship_raft::RaftConfig {
            shard_id: shard,
            replica_id: me,
            election_rtt: cfg.election_rtt,
            heartbeat_rtt: cfg.heartbeat_rtt,
            check_quorum: cfg.check_quorum,
            pre_vote: cfg.pre_vote,
            lease_read: cfg.lease_read,
            max_uncommitted_bytes: cfg.max_uncommitted_bytes,
            // An append (and the batch around it) must fit one transport frame.
            max_append_bytes: longship_raft::RaftConfig::default()
                .max_append_bytes
                .min(host.cfg.max_frame_bytes as u64 / 2),
            max_apply_bytes: host.cfg.max_apply_batch_bytes,
            seed: host.random_id(),
            async_storage_writes: host.cfg.async_log_writes,
            ..longship_raft::RaftConfig::default()
        };
        let reader = ReplicaLog::new(host.logdb.clone(), shard, me);
        let hs: HardState = state.hard_state;
        let snap = if cfg.is_witness {
            state.snapshot.clone()
        } else {
            crate::engine::restart_point(
                host,
                &snapshots,
                &state.snapshot,
                host.logdb.first_index(shard, me),
            )
            .inspect_err(|_| rsm.sm.close())?
        };
        let mut raft = match Raft::new(raft_cfg, reader, hs, snap.membership.clone(), snap.index) {
            Ok(raft) => raft,
            Err(e) => {
                rsm.sm.close();
                return Err(Error::invalid_config("config", e.to_string()));
            }
        };
        if let Some(guard) = state.recovery {
            // Protocol-aware recovery (docs/recovery.md): its storage lost
            // data it may have acknowledged; it votes again once whole.
            tracing::warn!(
                shard = shard.0,
                replica = me.0,
                acked_through = ?guard.acked_through.map(|i| i.0),
                restart_term = guard.restart_term.0,
                "replica starts under a recovery guard: it will not vote or campaign until a leader has brought its log past what it may have acknowledged"
            );
            raft.set_recovery_guard(guard);
            if let Some(l) = &host.listener {
                l.replica_recovering(shard, me, guard);
            }
        }
        let replica = Arc::new(Replica {
            shard_id: shard,
            replica_id: me,
            config: cfg,
            core: Mutex::new(CoreState {
                raft,
                quiesce: Default::default(),
            }),
            inbox: Mutex::new(Inbox::default()),
            pending: Mutex::new(Pending::default()),
            apply_queue: Mutex::new(VecDeque::new()),
            apply_throttled: AtomicBool::new(false),
            leader_suspect: AtomicBool::new(false),
            rsm,
            snapshots,
            applied_index: AtomicU64::new(0),
            snapshot_index: AtomicU64::new(0),
            snapshotting: AtomicBool::new(false),
            snapshot_tried: AtomicU64::new(0),
            leader_id: AtomicU64::new(0),
            leader_term: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            quiesced: AtomicBool::new(false),
            stop,
            failed: Mutex::new(None),
            unloaded: AtomicBool::new(false),
            apply_lock: Mutex::new(()),
            apply_missed: AtomicBool::new(false),
            snapshot_save: Mutex::new(()),
            addresses: Default::default(),
            addresses_version: AtomicU64::new(u64::MAX),
            boot_last_index: state.last_index,
        });
        // Before recovering: an on-disk state machine that already holds the
        // snapshot's state keeps it (see `Rsm::recover`).
        if let Some(i) = on_disk_index {
            replica.rsm.set_on_disk_index(i);
        }
        if !snap.is_empty() {
            // `restart_point` verified it in full (a witness has no data).
            if let Err(e) = recover_verified(&replica, &snap) {
                replica.rsm.sm.close();
                return Err(e);
            }
            replica.applied_index.store(snap.index.0, Ordering::Release);
            replica
                .snapshot_index
                .store(snap.index.0, Ordering::Release);
        }
        host.finish_start(reserved, replica);
        host.mark_step(shard);
        if let Some(l) = &host.listener {
            l.replica_ready(shard, me);
        }
        Ok(())
    }

    /// Stops the local replica of `shard` (its data stays; it can be restarted).
    ///
    /// Returns once no worker uses the replica any more: a state machine
    /// call in progress (an update, a snapshot being saved or recovered)
    /// is waited for. Long calls get a set [`StopFlag`] and should poll
    /// it and return early; one that ignores it holds this call up.
    pub fn stop_shard(&self, shard: ShardId) -> Result<()> {
        self.stop(shard, None)
    }

    /// Stops the local replica `replica` of `shard`.
    pub fn stop_replica(&self, shard: ShardId, replica: ReplicaId) -> Result<()> {
        self.stop(shard, Some(replica))
    }

    fn stop(&self, shard: ShardId, replica: Option<ReplicaId>) -> Result<()> {
        let (r, _reserved) = self
            .host
            .remove_for_stop(shard, replica)
            .ok_or(Error::ShardNotFound(shard))?;
        self.unload(&r);
        Ok(())
    }

    fn unload(&self, r: &Replica) {
        r.closed.store(true, Ordering::Release);
        r.stop.set();
        r.terminate_requests();
        self.host.drop_receivers(r.shard_id);
        // Wait until no worker still works on it: a step cycle in flight
        // (its write), a snapshot being saved (its commit and compaction,
        // and the state machine it reads), an apply round. A replica
        // restarted afterwards then loads a state nothing changes under it.
        drop(self.host.step_busy[self.host.step_worker_of(r.shard_id)].lock());
        // With asynchronous log writes, also its writes queued or being
        // written (the closed replica queues no more).
        if self.host.cfg.async_log_writes {
            self.drain_writes_of(r);
        }
        let _save = r.snapshot_save.lock();
        let _g = r.apply_lock.lock();
        if !r.unloaded.swap(true, Ordering::AcqRel) {
            r.rsm.sm.close();
            if let Some(l) = &self.host.listener {
                l.replica_unloaded(r.shard_id, r.replica_id);
            }
        }
    }

    /// Waits until no write of `r` is queued for the log writer or in its
    /// round (asynchronous log writes). Where no writer thread runs (manual
    /// mode, or a closing host), runs the writer here.
    fn drain_writes_of(&self, r: &Replica) {
        let threaded = !self.host.is_stopped() && self.host.step_on_receive.load(Ordering::Acquire);
        loop {
            // Checked under the round lock: no round has taken its writes
            // and is still writing them.
            let round = self.host.writes.busy.lock();
            if !self.host.writes.holds(r) {
                return;
            }
            drop(round);
            if threaded {
                std::thread::sleep(Duration::from_micros(200));
            } else {
                LogWriter {
                    host: self.host.clone(),
                }
                .run_once();
            }
        }
    }

    /// Removes everything this NodeHost stores of a replica that does not
    /// run here: its log entries and state, its snapshots and its snapshot
    /// directory, each durably (dragonboat's `RemoveData`). Use it once the
    /// replica was removed from its shard, or when its shard is deleted:
    /// removing the data of a replica that is still a member makes it lose
    /// what it acknowledged.
    ///
    /// Afterwards the replica can never be started here again (a durable
    /// tombstone): any [`Start`] of it, and a
    /// [`tools::import_snapshot`](crate::tools::import_snapshot) for it,
    /// fail with [`Error::ReplicaDataRemoved`], so that a restart script
    /// cannot bring back an empty replica under its old id. Calling it again
    /// is harmless (it finishes a removal a crash interrupted).
    ///
    /// Refused with [`Error::ShardNotStopped`] while a replica of the shard
    /// runs here or is being started or stopped (nothing is removed): stop
    /// it first, or use [`sync_remove_data`](Self::sync_remove_data), which
    /// waits for that. An on-disk state machine's own store is the
    /// application's to remove.
    pub fn remove_data(&self, shard: ShardId, replica: ReplicaId) -> Result<()> {
        if self.host.is_stopped() {
            return Err(Error::Stopped);
        }
        let _reserved = self
            .host
            .reserve_shard_for_start(shard)
            .ok_or(Error::ShardNotStopped(shard))?;
        crate::tombstone::remove_replica_data(&self.host, shard, replica)
    }

    /// [`remove_data`](Self::remove_data), after waiting up to `timeout`
    /// for the shard's local replica to be fully stopped and unloaded
    /// (dragonboat's `SyncRemoveData`): for a replica being stopped, or
    /// about to be, by another thread. Fails with [`Error::Timeout`] if it
    /// still runs then; nothing is removed in that case.
    pub fn sync_remove_data(
        &self,
        shard: ShardId,
        replica: ReplicaId,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        // A stop takes at most a worker cycle and a snapshot save; poll at
        // a fraction of an RTT, bounded by the timeout.
        let pause = Duration::from_millis(self.host.cfg.rtt_ms.clamp(1, 10));
        loop {
            match self.remove_data(shard, replica) {
                Err(Error::ShardNotStopped(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause)
                }
                Err(Error::ShardNotStopped(_)) => return Err(Error::Timeout),
                other => return other,
            }
        }
    }

    /// Stops every replica and the workers; the NodeHost cannot be used
    /// afterwards. Everything acknowledged is durable. Once it returns, the
    /// directory is free: a new NodeHost, [`tools::import_snapshot`] or
    /// [`tools::inspect`] may open it (dropping a NodeHost closes it).
    ///
    /// [`tools::import_snapshot`]: crate::tools::import_snapshot
    /// [`tools::inspect`]: crate::tools::inspect
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(l) = &self.host.listener {
            l.node_host_shutting_down();
        }
        if let Some(mut server) = self.metrics_server.lock().take() {
            server.stop();
        }
        self.host.stopped.store(true, Ordering::Release);
        // Long state machine calls (snapshots) stop early instead of
        // holding up the join of their worker below.
        for r in self.host.replicas.read().values() {
            r.stop.set();
        }
        for w in &self.host.step_ready {
            w.wake();
        }
        for w in &self.host.apply_ready {
            w.wake();
        }
        self.host.snapshot_ready.wake();
        self.host.writes.wake();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        self.host.transport.close();
        // Writes still queued are written (a crash would lose them, which
        // is safe, but a clean close keeps what it can); with the transport
        // closed, nothing that waited for them leaves any more.
        let writer = LogWriter {
            host: self.host.clone(),
        };
        while writer.run_once() {}
        let replicas: Vec<ReplicaRef> = std::mem::take(&mut *self.host.replicas.write())
            .into_values()
            .collect();
        for r in replicas {
            self.unload(&r);
        }
        if let Err(e) = self.host.logdb.close() {
            tracing::warn!(error = %e, "closing log storage");
        }
        // The directory is free for a new NodeHost or an offline tool.
        self.dir_lock.lock().take();
    }

    // ------------------------------------------------------------ requests

    fn replica_for(&self, shard: ShardId) -> Result<ReplicaRef> {
        if self.host.is_stopped() {
            return Err(Error::Stopped);
        }
        let r = self
            .host
            .replica(shard)
            .ok_or(Error::ShardNotFound(shard))?;
        if r.is_closed() || r.failed.lock().is_some() {
            return Err(Error::ShardClosed);
        }
        Ok(r)
    }

    fn deadline(&self, timeout: Duration) -> Result<u64> {
        deadline(&self.host, timeout)
    }

    /// Proposes `cmd` to the shard of `session`. The returned handle
    /// completes with the state machine's result once the entry is applied
    /// on this replica. After a completed proposal with a real session,
    /// call [`Session::proposal_completed`].
    pub fn propose(
        &self,
        session: &Session,
        cmd: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<RequestHandle<SmResult>> {
        let r = self.replica_for(session.shard_id)?;
        propose_on(
            &self.host,
            &r,
            session,
            cmd.into(),
            timeout,
            self.deadline(timeout)?,
        )
    }

    /// Proposes and waits for the result; advances the session on success.
    pub fn sync_propose(
        &self,
        session: &mut Session,
        cmd: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<SmResult> {
        let result = self.propose(session, cmd, timeout)?.wait()?;
        session.proposal_completed();
        Ok(result)
    }

    /// Registers a new client session with the shard (thesis §6.3).
    pub fn sync_get_session(&self, shard: ShardId, timeout: Duration) -> Result<Session> {
        let r = self.replica_for(shard)?;
        let mut s = Session::new(shard, self.host.random_id());
        s.prepare_for_register();
        let cmd = crate::session::register_cmd(r.config.max_sessions);
        let h = propose_raw(&self.host, &r, &s, cmd, self.deadline(timeout)?)?;
        h.wait()?;
        s.prepare_for_propose();
        Ok(s)
    }

    /// Starts registering a new client session without blocking (manual
    /// mode, async callers). Use the session for proposals only once the
    /// handle completed successfully; after a timeout, register another.
    pub fn register_session(
        &self,
        shard: ShardId,
        timeout: Duration,
    ) -> Result<(Session, RequestHandle<SmResult>)> {
        let r = self.replica_for(shard)?;
        let mut s = Session::new(shard, self.host.random_id());
        s.prepare_for_register();
        let cmd = crate::session::register_cmd(r.config.max_sessions);
        let h = propose_raw(&self.host, &r, &s, cmd, self.deadline(timeout)?)?;
        s.prepare_for_propose();
        Ok((s, h))
    }

    /// Unregisters a client session.
    pub fn sync_close_session(&self, session: &mut Session, timeout: Duration) -> Result<()> {
        if session.is_noop() {
            return Ok(());
        }
        let r = self.replica_for(session.shard_id)?;
        let mut s = session.clone();
        s.prepare_for_unregister();
        propose_raw(&self.host, &r, &s, Bytes::new(), self.deadline(timeout)?)?.wait()?;
        Ok(())
    }

    /// A session without de-duplication, for idempotent state machines.
    pub fn get_noop_session(&self, shard: ShardId) -> Session {
        Session::noop(shard)
    }

    /// Starts a linearizable read (ReadIndex, thesis §6.4). When the handle
    /// completes, [`read_local`](Self::read_local) returns a linearizable answer.
    pub fn read_index(&self, shard: ShardId, timeout: Duration) -> Result<RequestHandle<Index>> {
        let r = self.replica_for(shard)?;
        holds_data(&r)?;
        read_index_on(&self.host, &r, self.deadline(timeout)?)
    }

    /// Queries the local state machine (after a completed `read_index`).
    pub fn read_local(&self, shard: ShardId, query: &[u8]) -> Result<Vec<u8>> {
        let r = self.replica_for(shard)?;
        lookup_on(&r, query)
    }

    /// A linearizable read: `read_index`, wait, `read_local`.
    pub fn sync_read(&self, shard: ShardId, query: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.read_index(shard, timeout)?.wait()?;
        self.read_local(shard, query)
    }

    /// Queries the local state machine without any consistency guarantee.
    pub fn stale_read(&self, shard: ShardId, query: &[u8]) -> Result<Vec<u8>> {
        self.read_local(shard, query)
    }

    // ------------------------------------------------------------ membership

    /// A membership change of `shard`. `ordered`: check
    /// `config_change_index` even when the replica's
    /// [`Config::ordered_config_change`] is off (a master's requests).
    pub(crate) fn config_change(
        &self,
        shard: ShardId,
        change_type: ConfigChangeType,
        replica_id: ReplicaId,
        address: String,
        (config_change_index, ordered): (Index, bool),
        timeout: Duration,
    ) -> Result<RequestHandle<()>> {
        let r = self.replica_for(shard)?;
        if replica_id.is_none() {
            return Err(Error::invalid_config("replica_id", "must be non-zero"));
        }
        if change_type != ConfigChangeType::RemoveReplica
            && (address.is_empty() || address.len() > 255)
        {
            return Err(Error::invalid_config("address", "must be 1..=255 bytes"));
        }
        let deadline = self.deadline(timeout)?;
        let cc = ConfigChange {
            change_type,
            replica_id,
            address,
            config_change_id: if ordered || r.config.ordered_config_change {
                config_change_index
            } else {
                Index(0)
            },
        };
        let key = self.host.random_id();
        let entry = Entry {
            entry_type: EntryType::ConfigChange,
            key,
            cmd: encode_config_change(&cc).into(),
            ..Entry::default()
        };
        let (handle, completer) = request();
        {
            let mut pending = r.pending.lock();
            if pending.closed {
                return Err(Error::ShardClosed);
            }
            pending.add_config_change(
                key,
                PendingConfigChange {
                    completer,
                    deadline,
                },
            );
        }
        {
            let mut inbox = r.inbox.lock();
            if inbox.config_changes.len() >= 64 {
                drop(inbox);
                r.pending.lock().config_changes.remove(&key);
                return Err(Error::SystemBusy);
            }
            inbox.config_changes.push(entry);
        }
        self.host.mark_step(shard);
        Ok(handle)
    }

    /// Adds a voting replica at `address`, or promotes a non-voting one.
    /// Start the new replica on its host with [`Start::Join`].
    ///
    /// `config_change_index` is the [`MembershipInfo::config_change_id`] of
    /// the membership the change is based on: with
    /// [`Config::ordered_config_change`] a change based on an outdated
    /// membership is refused ([`Error::Rejected`]); without it, it is not
    /// checked (pass `Index(0)`). The handle completes once the change is
    /// applied on this replica. A removed replica id is refused
    /// ([`Error::ReplicaRemoved`]).
    pub fn request_add_replica(
        &self,
        shard: ShardId,
        replica_id: ReplicaId,
        address: impl Into<String>,
        config_change_index: Index,
        timeout: Duration,
    ) -> Result<RequestHandle<()>> {
        self.config_change(
            shard,
            ConfigChangeType::AddReplica,
            replica_id,
            address.into(),
            (config_change_index, false),
            timeout,
        )
    }

    /// Promotes a non-voting replica to voter (its address is kept).
    /// `config_change_index` as for
    /// [`request_add_replica`](Self::request_add_replica).
    pub fn request_promote_non_voting(
        &self,
        shard: ShardId,
        replica_id: ReplicaId,
        config_change_index: Index,
        timeout: Duration,
    ) -> Result<RequestHandle<()>> {
        let addr = self.non_voting_address(shard, replica_id)?;
        self.request_add_replica(shard, replica_id, addr, config_change_index, timeout)
    }

    /// The address of non-voting member `replica_id` of `shard`.
    fn non_voting_address(&self, shard: ShardId, replica_id: ReplicaId) -> Result<String> {
        let m = self.replica_for(shard)?.rsm.applied().membership;
        m.non_votings.get(&replica_id).cloned().ok_or_else(|| {
            Error::Rejected(format!(
                "replica {replica_id} is not a non-voting member of shard {shard}"
            ))
        })
    }

    /// A membership change a master asked for: checked against
    /// `config_change_index` (unless it is `Index(0)`) whatever the
    /// replica's [`Config::ordered_config_change`], so that a request
    /// delayed or repeated in the network cannot take effect after another
    /// change. `AddReplica` of a replica with no `address` promotes that
    /// non-voting member.
    pub(crate) fn master_config_change(
        &self,
        shard: ShardId,
        change_type: ConfigChangeType,
        replica_id: ReplicaId,
        address: Option<String>,
        config_change_index: Index,
        timeout: Duration,
    ) -> Result<RequestHandle<()>> {
        let address = match (address, change_type) {
            (Some(a), _) => a,
            (None, ConfigChangeType::AddReplica) => self.non_voting_address(shard, replica_id)?,
            (None, _) => String::new(),
        };
        self.config_change(
            shard,
            change_type,
            replica_id,
            address,
            (config_change_index, true),
            timeout,
        )
    }

    /// Removes a replica for good: its id can never be used again in this
    /// shard. `config_change_index` as for
    /// [`request_add_replica`](Self::request_add_replica).
    pub fn request_delete_replica(
        &self,
        shard: ShardId,
        replica_id: ReplicaId,
        config_change_index: Index,
        timeout: Duration,
    ) -> Result<RequestHandle<()>> {
        self.config_change(
            shard,
            ConfigChangeType::RemoveReplica,
            replica_id,
            String::new(),
            (config_change_index, false),
            timeout,
        )
    }

    /// Adds a non-voting replica (it receives the log but does not vote);
    /// start it with [`Start::Join`]. `config_change_index` as for
    /// [`request_add_replica`](Self::request_add_replica).
    pub fn request_add_non_voting(
        &self,
        shard: ShardId,
        replica_id: ReplicaId,
        address: impl Into<String>,
        config_change_index: Index,
        timeout: Duration,
    ) -> Result<RequestHandle<()>> {
        self.config_change(
            shard,
            ConfigChangeType::AddNonVoting,
            replica_id,
            address.into(),
            (config_change_index, false),
            timeout,
        )
    }

    /// Adds a witness (it votes and persists log metadata but holds no
    /// state machine data); start it with [`Start::Join`] and
    /// [`Config::is_witness`]. `config_change_index` as for
    /// [`request_add_replica`](Self::request_add_replica).
    pub fn request_add_witness(
        &self,
        shard: ShardId,
        replica_id: ReplicaId,
        address: impl Into<String>,
        config_change_index: Index,
        timeout: Duration,
    ) -> Result<RequestHandle<()>> {
        self.config_change(
            shard,
            ConfigChangeType::AddWitness,
            replica_id,
            address.into(),
            (config_change_index, false),
            timeout,
        )
    }

    /// The shard's membership, read linearizably.
    pub fn sync_get_shard_membership(
        &self,
        shard: ShardId,
        timeout: Duration,
    ) -> Result<MembershipInfo> {
        let r = self.replica_for(shard)?;
        read_index_on(&self.host, &r, self.deadline(timeout)?)?.wait()?;
        Ok(MembershipInfo::from(&r.rsm.applied().membership))
    }

    /// Asks the shard to move leadership to `target`.
    pub fn request_leader_transfer(&self, shard: ShardId, target: ReplicaId) -> Result<()> {
        let r = self.replica_for(shard)?;
        if target.is_none() {
            return Err(Error::invalid_config("target", "must be non-zero"));
        }
        {
            let mut inbox = r.inbox.lock();
            if inbox.commands.len() >= 64 {
                return Err(Error::SystemBusy);
            }
            inbox.commands.push(Command::Transfer(target));
        }
        self.host.mark_step(shard);
        Ok(())
    }

    /// The protocol state of the local replica of `shard` (role, term,
    /// vote, commit, applied, log range, membership), for operators and
    /// debugging. Takes the replica's core lock briefly.
    pub fn raft_status(&self, shard: ShardId) -> Result<crate::RaftStatus> {
        let r = self
            .host
            .replica(shard)
            .ok_or(Error::ShardNotFound(shard))?;
        Ok(r.core.lock().raft.status())
    }

    /// Checks the protocol core's own invariants for the local replica of
    /// `shard` (log order, commit and applied indexes, terms, role,
    /// membership): `Err` names the first one broken. For tests and
    /// simulators, which call it after every step; a replica in production
    /// never breaks them.
    pub fn check_core_invariants(&self, shard: ShardId) -> Result<()> {
        let r = self
            .host
            .replica(shard)
            .ok_or(Error::ShardNotFound(shard))?;
        let core = r.core.lock();
        core.raft
            .check_invariants()
            .map_err(|v| Error::Rejected(format!("core invariant broken: {v}")))
    }

    /// The leader of `shard` as known by the local replica: `None` while
    /// no leader is known (during an election). Not linearizable: another
    /// replica may already lead in a newer term.
    pub fn get_leader(&self, shard: ShardId) -> Result<Option<Leader>> {
        let r = self.replica_for(shard)?;
        let (replica_id, term) = r.leader();
        Ok((!replica_id.is_none()).then_some(Leader { replica_id, term }))
    }

    /// Why this NodeHost's log storage refuses all writes, if it does: an
    /// earlier write or fsync failed, and what reached the disk is unknown
    /// until the NodeHost is closed and built again (which repairs or
    /// reports the log's tail). Meanwhile every replica that writes fails
    /// and no replica can start: a health check restarts the NodeHost when
    /// this is `Some`, even when no replica runs to report it.
    pub fn log_storage_failure(&self) -> Option<String> {
        self.host.logdb.failure()
    }

    /// Whether log storage holds data of (shard, replica).
    pub fn has_node_info(&self, shard: ShardId, replica: ReplicaId) -> bool {
        self.host.logdb.read_state(shard, replica).is_some()
    }

    /// What this host runs and stores, log information included (see
    /// [`get_node_host_info_with`](Self::get_node_host_info_with)).
    pub fn get_node_host_info(&self) -> NodeHostInfo {
        self.get_node_host_info_with(crate::NodeHostInfoOption::default())
    }

    /// Requests a snapshot of the local replica of `shard` now. The handle
    /// completes with the snapshot's index and, when
    /// [`SnapshotOption::export_path`] is set, the directory it was exported
    /// to (see there for how exports are named and what a second export of
    /// the same index does).
    ///
    /// Without an export path, a replica that applied nothing since its
    /// last snapshot refuses with [`Error::Rejected`] (nothing new to
    /// snapshot): propose something first, or use the last snapshot. An
    /// export is possible whenever something was applied. A state machine
    /// that aborts the save ([`SmError::snapshot_aborted`]) ends the
    /// request with [`Error::Aborted`].
    ///
    /// [`SmError::snapshot_aborted`]: crate::SmError::snapshot_aborted
    pub fn request_snapshot(
        &self,
        shard: ShardId,
        opt: SnapshotOption,
        timeout: Duration,
    ) -> Result<RequestHandle<SnapshotResult>> {
        let r = self.replica_for(shard)?;
        let deadline = self.deadline(timeout)?;
        if opt.export_path.is_some() && opt.compaction_overhead.is_some() {
            return Err(Error::invalid_config(
                "SnapshotOption::compaction_overhead",
                "an exported snapshot compacts nothing: leave it None with export_path",
            ));
        }
        if opt.export_path.is_some() {
            holds_data(&r)?;
        }
        let (handle, completer) = request();
        let key = self.host.random_id();
        let min = r.applied();
        let export = opt.export_path.is_some();
        {
            let mut pending = r.pending.lock();
            if pending.closed {
                return Err(Error::ShardClosed);
            }
            pending.snapshots.push(PendingSnapshot {
                key,
                completer,
                deadline,
                opt,
                min,
            });
        }
        // An export leaves the replica's own snapshots alone: it does not
        // hold back automatic ones.
        if !export {
            r.snapshotting.store(true, Ordering::Release);
        }
        if !self
            .host
            .push_snapshot_job(SnapshotJob::Requested { shard, key })
        {
            // No job will clear the mark: left set, it would stop the
            // automatic snapshots of this replica for good.
            if !export {
                r.snapshotting.store(false, Ordering::Release);
            }
            let mut pending = r.pending.lock();
            pending.snapshots.retain(|p| p.key != key);
            return Err(Error::SystemBusy);
        }
        Ok(handle)
    }

    /// A handle for fast repeated requests on one shard.
    pub fn get_node_user(&self, shard: ShardId) -> Result<NodeUser> {
        Ok(NodeUser {
            host: self.host.clone(),
            replica: self.replica_for(shard)?,
        })
    }
}

impl Drop for NodeHost {
    fn drop(&mut self) {
        self.close();
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .expect("spawn worker thread")
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<NodeHost>();
    is::<NodeUser>();
    let _ = ApplyTask::Entries(Vec::new());
}
