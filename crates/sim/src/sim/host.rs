//! NodeHosts of the simulation: start, crash (losing what was not synced)
//! and restart on the same file system.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use longship::{Config, NodeHost, NodeHostConfig, ReplicaId, ShardId, Start};
use longship_storage::logdb::{Wal, WalOptions};
use longship_storage::vfs::{CrashMode, FaultyFs, FileSystem};

use super::{RTT_MS, Sim};
use crate::kv::SimKv;

/// A replica a host runs (and starts again after a restart).
#[derive(Clone, Debug)]
pub(super) struct Hosted {
    pub(super) cfg: Config,
    /// Members to bootstrap a new shard with (`None`: the replica joins).
    pub(super) initial: Option<BTreeMap<ReplicaId, String>>,
}

/// One NodeHost's place in the simulation.
pub(super) struct HostSlot {
    pub(super) addr: String,
    pub(super) dir: PathBuf,
    /// The host's disk; survives crashes.
    pub(super) fs: FaultyFs,
    /// The running NodeHost (`None` while crashed).
    pub(super) nh: Option<NodeHost>,
    /// Bumped by every start.
    pub(super) incarnation: u64,
    /// The replicas the host runs, by shard.
    pub(super) hosted: BTreeMap<ShardId, Hosted>,
    /// When a crashed host comes back.
    pub(super) restart_at: Option<u64>,
    /// When a host whose replicas failed (I/O errors) is restarted.
    pub(super) sick_since: Option<u64>,
    /// Down, and its replicas will start guarded: its disk's newest
    /// durable bytes were damaged at its last crash, or a replica ran
    /// under a recovery guard when it crashed (guards are durable). Reset
    /// when it starts; a running host's guards are asked of its NodeHost.
    pub(super) damaged: bool,
    /// Not part of the cluster now: a host that has not joined yet, or
    /// one that died for good (master mode). It is never restarted.
    pub(super) gone: bool,
    /// Died for good (master mode).
    pub(super) dead: bool,
    /// Ticks this host's clock got since it started (skew included).
    pub(super) local_ticks: u64,
    /// The simulator's tick at which the host went down (`None` while up).
    pub(super) down_since_tick: Option<u64>,
    /// Its reporting to the master and its master ticker (master mode).
    pub(super) reporter: Option<super::master::HostReporter>,
    /// It started its initial master replica once (master mode): a later
    /// start without its data restarts nothing (the master may have moved
    /// it away and deleted the data).
    pub(super) master_bootstrapped: bool,
}

/// Flips one bit among the last `window` durable bytes of the host's
/// newest WAL segment (before the crash that makes them what the disk
/// holds). The flip must land in the newest batch, the damage this fault
/// stands for: where it would land in an older batch (corruption the
/// NodeHost rightly refuses to start on), it is undone. Returns the
/// offset of a flip that stayed.
fn damage_newest_segment(slot: &HostSlot, window: u64, seed: u64) -> Result<Option<u64>, String> {
    let wal_dir = NodeHostConfig {
        node_host_dir: slot.dir.clone(),
        ..NodeHostConfig::default()
    }
    .wal_dir();
    let newest = slot
        .fs
        .list(&wal_dir)
        .map_err(|e| format!("list {}: {e}", wal_dir.display()))?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max();
    let Some(path) = newest else {
        return Ok(None);
    };
    let flip = |slot: &HostSlot| {
        slot.fs
            .damage_synced_tail(&path, window, seed)
            .map_err(|e| format!("damage {}: {e}", path.display()))
    };
    let Some(at) = flip(slot)? else {
        return Ok(None);
    };
    let image = slot
        .fs
        .crash_image(CrashMode::DropUnsynced)
        .map_err(|e| format!("crash image: {e}"))?;
    match Wal::inspect(&image, &wal_dir) {
        Ok(_) => Ok(Some(at)),
        Err(_) => {
            // Same seed: the same byte and bit, flipped back.
            flip(slot)?;
            Ok(None)
        }
    }
}

/// Small segments, no preallocation: rotation and compaction happen in
/// short runs, and the in-memory disk stays small.
fn wal_options() -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 10,
        max_cache_bytes: 1 << 20,
        max_group_bytes: 1 << 20,
        preallocate_bytes: 0,
    }
}

impl HostSlot {
    pub(super) fn new(addr: String, dir: PathBuf, seed: u64) -> HostSlot {
        HostSlot {
            addr,
            dir,
            fs: FaultyFs::over_mem(seed),
            nh: None,
            incarnation: 0,
            hosted: BTreeMap::new(),
            damaged: false,
            restart_at: None,
            sick_since: None,
            gone: false,
            dead: false,
            local_ticks: 0,
            down_since_tick: None,
            reporter: None,
            master_bootstrapped: false,
        }
    }

    pub(super) fn add_replica(
        &mut self,
        cfg: Config,
        initial: Option<BTreeMap<ReplicaId, String>>,
    ) {
        self.hosted.insert(cfg.shard_id, Hosted { cfg, initial });
    }

    /// Whether this host runs a replica of `shard` now.
    pub(super) fn runs(&self, shard: ShardId) -> bool {
        self.nh.is_some() && self.hosted.contains_key(&shard)
    }
}

/// Starts one replica on a running NodeHost.
pub(super) fn start_replica(nh: &NodeHost, hosted: &Hosted) -> longship::Result<()> {
    let (shard, replica) = (hosted.cfg.shard_id, hosted.cfg.replica_id);
    // A replica with data restarts from it; otherwise it bootstraps with
    // the initial members or joins.
    let start = match (&hosted.initial, nh.has_node_info(shard, replica)) {
        (_, true) => Start::Restart,
        (Some(initial), false) => Start::New(initial.clone()),
        (None, false) => Start::Join,
    };
    nh.start_replica(start, |_, _| Box::new(SimKv::new()), hosted.cfg.clone())
}

impl Sim {
    /// Builds host `h`'s NodeHost on its disk and starts its replicas. An
    /// injected I/O error on the way crashes it again (it retries later).
    pub(super) fn start_host(&mut self, h: usize) -> Result<(), String> {
        let seed = self.rng.next_u64();
        let io = match self.phase {
            super::Phase::Faults => self.plan.io,
            super::Phase::Setup | super::Phase::Heal => Default::default(),
        };
        let members = self
            .master
            .is_some()
            .then(|| super::master::MasterSim::initial_members(&self.hosts));
        let slot = &mut self.hosts[h];
        slot.local_ticks = 0;
        slot.reporter = None;
        slot.restart_at = None;
        slot.sick_since = None;
        slot.damaged = false;
        slot.incarnation += 1;
        let fs: Arc<dyn FileSystem> = Arc::new(slot.fs.clone());
        let cfg = NodeHostConfig {
            node_host_dir: slot.dir.clone(),
            rtt_ms: RTT_MS,
            raft_address: slot.addr.clone(),
            deployment_id: 7,
            step_workers: 2,
            apply_workers: 2,
            snapshot_workers: 1,
            seed: Some(seed),
            async_log_writes: self.cfg.async_log_writes,
            ..NodeHostConfig::default()
        };
        let faults_before = slot.fs.faults_injected();
        let built = Wal::open(fs.clone(), &cfg.wal_dir(), wal_options())
            .map_err(longship::Error::from)
            .and_then(|wal| {
                NodeHost::builder(cfg)
                    .transport(Arc::new(self.net.network().transport(&slot.addr)))
                    .file_system(fs)
                    .log_db(Arc::new(wal))
                    .manual()
                    .build()
            });
        let master = self.master.as_ref();
        let started = built.and_then(|nh| {
            if let (Some(m), Some(members)) = (master, &members) {
                // Master mode: what the host holds data of, its initial
                // master replica, and its reporter.
                if let Err(e) = m.start_host_replicas(h, slot, &nh, members) {
                    slot.fs.crash_after_op(Some(slot.fs.op_count()));
                    slot.reporter = None;
                    drop(nh);
                    return Err(e);
                }
                return Ok(nh);
            }
            for hosted in slot.hosted.values() {
                if let Err(e) = start_replica(&nh, hosted) {
                    // Nothing more reaches the disk while it is dropped.
                    slot.fs.crash_after_op(Some(slot.fs.op_count()));
                    drop(nh);
                    return Err(longship::Error::Rejected(format!(
                        "replica {} of {}: {e}",
                        hosted.cfg.replica_id, hosted.cfg.shard_id
                    )));
                }
            }
            Ok(nh)
        });
        let inc = slot.incarnation;
        match started {
            Ok(nh) => {
                slot.nh = Some(nh);
                slot.down_since_tick = None;
                slot.fs.set_probabilities(io);
                self.trace_event("start", h as u64, inc);
                Ok(())
            }
            Err(e) => {
                if slot.fs.faults_injected() == faults_before {
                    return Err(format!("host {h} did not start: {e}"));
                }
                // An injected I/O error: the half-started host is gone; its
                // disk crashes again and it retries later.
                self.trace_event("start-failed", h as u64, inc);
                let delay = super::ROUNDS_PER_TICK * (1 + self.rng.below(10));
                self.crash_host(h, delay)
            }
        }
    }

    /// Crashes host `h`: the power is cut (nothing more reaches its disk),
    /// the NodeHost is dropped, and the disk keeps only what was synced (or
    /// a random prefix of unsynced appends). It restarts `delay` rounds on.
    pub(super) fn crash_host(&mut self, h: usize, delay: u64) -> Result<(), String> {
        let mut mode = if self.rng.chance(0.5) {
            CrashMode::DropUnsynced
        } else {
            CrashMode::KeepRandomPrefix
        };
        let damage = self.hosts[h].nh.is_some()
            && self.plan.tail_damage_per_crash > 0.0
            && self.damage_rng.chance(self.plan.tail_damage_per_crash)
            && !self.any_replica_guarded()
            && self.full_copies_survive(h);
        let slot = &mut self.hosts[h];
        // A guard outlives the crash: remember it while the host is down
        // (seed 12048564 damaged a second replica of a shard whose first
        // guarded replica was down, and no leader could be elected).
        let guarded = slot.nh.as_ref().is_some_and(|nh| {
            nh.get_node_host_info()
                .shards
                .iter()
                .any(|s| s.recovery_guard.is_some())
        });
        slot.damaged |= guarded;
        slot.fs.crash_after_op(Some(slot.fs.op_count()));
        let was_running = slot.nh.take().is_some();
        slot.reporter = None;
        if was_running {
            slot.down_since_tick = Some(self.ticks);
        }
        if damage {
            // What the disk had acknowledged is damaged; nothing unsynced
            // survives after it (else the damage would be mid-log).
            mode = CrashMode::DropUnsynced;
            let window = 1 + self.damage_rng.below(24);
            let seed = self.damage_rng.next_u64();
            if let Some(at) = damage_newest_segment(slot, window, seed)? {
                slot.damaged = true;
                self.stats.tail_damages += 1;
                self.trace_event("damage", h as u64, at);
            }
        }
        let slot = &mut self.hosts[h];
        slot.fs
            .crash(mode)
            .map_err(|e| format!("crash of host {h}'s disk failed: {e}"))?;
        slot.restart_at = Some(self.round + delay.max(1));
        slot.sick_since = None;
        if was_running {
            self.stats.crashes += 1;
        }
        self.checker.host_crashed(h);
        self.trace_event("crash", h as u64, delay);
        Ok(())
    }

    /// Whether some replica runs under a recovery guard, or will when its
    /// damaged host starts: the simulator damages one replica's log at a
    /// time (two at once could leave a shard with no quorum of unguarded
    /// voters, which stops it for good, by design, not for a test run).
    fn any_replica_guarded(&self) -> bool {
        self.hosts.iter().any(|slot| {
            slot.damaged
                || slot.nh.as_ref().is_some_and(|nh| {
                    nh.get_node_host_info()
                        .shards
                        .iter()
                        .any(|s| s.recovery_guard.is_some())
                })
        })
    }

    /// Whether every shard host `h` serves keeps a full copy of each
    /// committed entry if `h` loses what it acknowledged last: no witness
    /// (which holds no payloads) and at least three voters. Otherwise the
    /// lost entry may be gone from every full replica; the shard then
    /// stops rather than lose it (docs/recovery.md), which is what it must
    /// do, but not what a run that must finish can show.
    fn full_copies_survive(&self, h: usize) -> bool {
        self.hosts[h].nh.as_ref().is_some_and(|nh| {
            nh.get_node_host_info()
                .shards
                .iter()
                .all(|s| s.membership.witnesses.is_empty() && s.membership.voters.len() >= 3)
        })
    }

    pub(super) fn restart_due_hosts(&mut self) -> Result<(), String> {
        for h in 0..self.hosts.len() {
            let due = self.hosts[h].restart_at.is_some_and(|at| at <= self.round);
            if due && self.hosts[h].nh.is_none() {
                self.start_host(h)?;
            }
        }
        Ok(())
    }

    /// A host with a replica stopped by an I/O error is restarted (as an
    /// operator or supervisor would) a little later.
    pub(super) fn crash_sick_hosts(&mut self) -> Result<(), String> {
        for h in 0..self.hosts.len() {
            let Some(nh) = &self.hosts[h].nh else {
                continue;
            };
            // A failed replica, or log storage that refuses writes (a host
            // running no replica yet shows only that).
            let failed = nh.get_node_host_info().shards.iter().any(|s| s.failed)
                || nh.log_storage_failure().is_some();
            if !failed {
                continue;
            }
            match self.hosts[h].sick_since {
                None => self.hosts[h].sick_since = Some(self.round),
                Some(since) if self.round >= since + 8 * super::ROUNDS_PER_TICK => {
                    let delay = super::ROUNDS_PER_TICK * (1 + self.rng.below(10));
                    self.crash_host(h, delay)?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
